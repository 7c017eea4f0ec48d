//! One partition's publishing task: it tails the partition's log from the
//! checkpoint, sends each event (or an acknowledgement of nothing, for one
//! the filter leaves out), awaits the acknowledgements in order, moves and
//! writes the checkpoint, and starts again from it after a failure.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skald_engine::Engine;
use skald_model::{Event, EventKind, SagaId};
use tokio::sync::watch;

use crate::broker::{Ack, Broker, BrokerError, PendingAck};
use crate::checkpoint;
use crate::publisher::{Mark, Marks, PublishError, PublisherOptions};

/// The shortest and longest wait before a failed partition tries again.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a partition not written here looks again.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// One partition's publishing task.
pub(crate) struct PartitionTask {
    pub(crate) partition: u16,
    pub(crate) engine: Engine,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) options: Arc<PublisherOptions>,
    pub(crate) marks: Arc<Marks>,
    pub(crate) mark: Arc<Mark>,
    pub(crate) stopping: watch::Receiver<bool>,
}

impl PartitionTask {
    /// Publishes until the publisher stops, starting again (from the
    /// checkpoint) after each failure, backing off.
    pub(crate) async fn run(mut self) {
        let mut backoff = RETRY_MIN;
        while !*self.stopping.borrow() {
            let began = Instant::now();
            match self.publish().await {
                Ok(()) => break,
                Err(error) => {
                    self.mark.errors.fetch_add(1, Ordering::Relaxed);
                    if !matches!(error, PublishError::NotLeading(_)) {
                        tracing::warn!(partition = self.partition, %error, ?backoff, "publishing failed; starting again from the checkpoint");
                    }
                    // A run that went on for a while starts the backoff again.
                    if began.elapsed() > RETRY_MAX {
                        backoff = RETRY_MIN;
                    }
                    self.note_end();
                    let mut stopping = self.stopping.clone();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        // (A dropped publisher ends the wait too.)
                        _ = stopping.wait_for(|stop| *stop) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        self.write_checkpoint().await;
    }

    /// Told to stop, or the publisher was dropped without `stop`.
    fn stopped(&self) -> bool {
        *self.stopping.borrow() || self.stopping.has_changed().is_err()
    }

    /// Writes the checkpoint, off the runtime's threads.
    async fn write_checkpoint(&self) {
        let (dir, partition) = (self.marks.dir.clone(), self.partition);
        let lsn = self.mark.published.load(Ordering::Acquire);
        let written =
            tokio::task::spawn_blocking(move || checkpoint::write(&dir, partition, lsn)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(partition, %error, "the publisher's checkpoint was not written")
            }
            Err(error) => {
                tracing::error!(partition, %error, "the publisher's checkpoint was not written")
            }
        }
    }

    /// Waits until this engine writes the partition (in a hosted engine:
    /// leads it); its log.
    async fn log(&mut self) -> Option<Arc<skald_log::Log>> {
        loop {
            if self.stopped() {
                return None;
            }
            // (A follower engine leads nothing: it never publishes.)
            let written_here = self.engine.leads(self.partition);
            self.note_end();
            if let Some(log) = self.engine.partition_log(usize::from(self.partition)) {
                if written_here {
                    return Some(log);
                }
            }
            let mut stopping = self.stopping.clone();
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        }
    }

    /// Notes the partition's end (for the lag), as its log says now.
    fn note_end(&self) {
        if let Some(log) = self.engine.partition_log(usize::from(self.partition)) {
            self.mark.end.store(log.visible_lsn(), Ordering::Release);
        }
    }

    /// Tails the log from the checkpoint and publishes, until stopped
    /// (`Ok`) or a failure.
    async fn publish(&mut self) -> Result<(), PublishError> {
        let partition = self.partition;
        let Some(log) = self.log().await else {
            return Ok(());
        };
        let log_error = |error| PublishError::Log { partition, error };
        let checkpoint = self.mark.published.load(Ordering::Acquire);
        let mut from = checkpoint.max(log.first_lsn());
        if from > checkpoint && checkpoint > 0 {
            tracing::warn!(partition, checkpoint, first = from, "events below the log's first retained record were never published (removed before this publisher held the log)");
        }
        if from > log.visible_lsn() {
            // The log was cut back below what was published (a restore, or
            // a failover in local mode): the events past its end that the
            // broker holds were taken back, and new ones will reuse their
            // LSNs (and ids).
            tracing::error!(partition, checkpoint, end = log.visible_lsn(), "the publisher's checkpoint is past the log's end: events it published were taken back; publishing from the end");
            from = log.visible_lsn();
        }
        self.mark.published.store(from, Ordering::Release);
        let mut tailer = log.tail_from(from).map_err(log_error)?;
        // The tailer reads on its own: the partition's log must stay free
        // to close (a shutdown, a change of role).
        drop(log);
        let mut in_flight: VecDeque<(u64, PendingAck)> = VecDeque::new();
        let mut sagas: HashMap<SagaId, Known> = HashMap::new();
        let mut released = from;
        let mut written = self.mark.published.load(Ordering::Acquire);
        let mut tick = tokio::time::interval(self.options.checkpoint_every);
        let mut stopping = self.stopping.clone();
        loop {
            self.mark.end.store(tailer.visible_lsn(), Ordering::Release);
            let room = in_flight.len() < self.options.in_flight_max;
            let step = tokio::select! {
                biased;
                _ = stopping.wait_for(|stop| *stop) => Step::Stop,
                ack = async { (&mut in_flight.front_mut().expect("one in flight").1 .0).await }, if !in_flight.is_empty() => Step::Acked(ack),
                _ = tick.tick() => Step::Tick,
                record = tailer.next(), if room => Step::Record(record.map(|r| (r.lsn, r.payload.to_vec())).map_err(log_error)),
            };
            match step {
                Step::Stop => {
                    self.drain(&mut in_flight).await;
                    return Ok(());
                }
                Step::Acked(ack) => {
                    let (end, _) = in_flight.pop_front().expect("one in flight");
                    let ack = ack?;
                    self.acknowledged(end, ack, tailer.visible_lsn());
                }
                Step::Tick => {
                    if !self.engine.leads(partition) {
                        self.drain(&mut in_flight).await;
                        return Err(PublishError::NotLeading(partition));
                    }
                    let published = self.mark.published.load(Ordering::Acquire);
                    if published > written {
                        self.write_checkpoint().await;
                        written = published;
                    }
                }
                Step::Record(record) => {
                    let (lsn, payload) = record?;
                    if let Some(replication) = &self.options.replication {
                        if lsn >= released {
                            released = tailer.visible_lsn().max(lsn + 1);
                            replication.replicated(partition, released).await;
                        }
                    }
                    if !self.engine.leads(partition) {
                        self.drain(&mut in_flight).await;
                        return Err(PublishError::NotLeading(partition));
                    }
                    let pending = self.send(lsn, &payload, &mut sagas).await?;
                    in_flight.push_back((lsn + 1, pending));
                }
            }
        }
    }

    /// Awaits what is in flight (a second at most), moving the checkpoint.
    async fn drain(&self, in_flight: &mut VecDeque<(u64, PendingAck)>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Some((end, pending)) = in_flight.pop_front() {
            match tokio::time::timeout_at(deadline, pending.0).await {
                Ok(Ok(ack)) => self.acknowledged(end, ack, end),
                _ => return,
            }
        }
    }

    /// The broker acknowledged every event below `end`.
    fn acknowledged(&self, end: u64, ack: Ack, visible: u64) {
        self.mark.published.store(end, Ordering::Release);
        // Sequence 0: an event the filter left out (nothing was sent).
        if ack.sequence > 0 {
            self.mark.sent.fetch_add(1, Ordering::Relaxed);
        }
        if ack.duplicate {
            self.mark.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if end >= visible {
            *self.mark.caught_up_at.lock() = Some(Instant::now());
        }
    }

    /// Sends the event at `lsn` (or, filtered out, an acknowledgement of
    /// nothing, so that the checkpoint passes it in order).
    async fn send(
        &self,
        lsn: u64,
        payload: &[u8],
        sagas: &mut HashMap<SagaId, Known>,
    ) -> Result<PendingAck, PublishError> {
        let partition = self.partition;
        let event = Event::decode(payload).map_err(|error| PublishError::Decode {
            partition,
            lsn,
            error: error.to_string(),
        })?;
        let known = self.known(&event, sagas).await?;
        let kind = event.kind.name();
        // Ended (a Failed saga's later events look its definition up again).
        if matches!(
            event.kind,
            EventKind::Completed | EventKind::Compensated | EventKind::Failed { .. }
        ) {
            sagas.remove(&event.saga);
        }
        if !self.options.filter.admits(&known.definition, kind) {
            let nothing = Ack {
                sequence: 0,
                duplicate: false,
            };
            return Ok(PendingAck(Box::pin(std::future::ready(Ok(nothing)))));
        }
        let message = crate::event::message(
            &self.options.subject_prefix,
            (partition, lsn),
            &event,
            (&known.definition, known.traceparent.as_deref()),
        );
        Ok(self.broker.send(message).await?)
    }

    /// The definition and trace of `event`'s saga: from its start, or
    /// (started before this run's checkpoint) from the engine.
    async fn known(
        &self,
        event: &Event,
        sagas: &mut HashMap<SagaId, Known>,
    ) -> Result<Known, PublishError> {
        if let Some(known) = crate::event::started(event) {
            sagas.insert(event.saga, known);
        }
        if let Some(known) = sagas.get(&event.saga) {
            return Ok(known.clone());
        }
        let definition = match self.engine.view(event.saga).await? {
            Some(view) => view.definition,
            None => "unknown".to_owned(),
        };
        let known = Known {
            definition,
            traceparent: None,
        };
        sagas.insert(event.saga, known.clone());
        Ok(known)
    }
}

/// What the publisher knows of a saga.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) definition: String,
    pub(crate) traceparent: Option<String>,
}

/// What a partition's loop does next.
enum Step {
    Stop,
    Acked(Result<Ack, BrokerError>),
    Tick,
    Record(Result<(u64, Vec<u8>), PublishError>),
}
