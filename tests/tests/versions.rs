//! Definition versions on the deterministic simulation: a saga runs to its
//! end on the version it started with while new starts take the newest; a
//! version registered with other steps is refused at open, naming it; a
//! saga whose version is not registered is parked, visibly, and resumes
//! once it is.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use skald_engine::sim::{simulate, Simulation};
use skald_engine::{
    Engine, EngineError, Saga, SagaId, SagaStatus, Step, StepContext, StepError, VersionCount,
};

/// Which version's handler ran which step, in order.
#[derive(Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn entries(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

/// Version 1: `reserve`, then `charge` (the pivot), which hangs when
/// `hang` (so a saga can be left in flight). Version 2 adds a `check`
/// step before the pivot.
fn order(version: u32, journal: &Arc<Journal>, hang: bool) -> Saga<u64> {
    let step = |name: &'static str| {
        let journal = journal.clone();
        move |ctx: StepContext<u64>| {
            let journal = journal.clone();
            async move {
                journal
                    .0
                    .lock()
                    .push(format!("v{version} {name} {}", ctx.saga_id()));
                if hang && name == "charge" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, StepError>(())
            }
        }
    };
    let mut saga = Saga::<u64>::new("order")
        .version(version)
        .step(Step::new("reserve", step("reserve")).compensate(|_ctx| async { Ok(()) }));
    if version >= 2 {
        saga = saga.step(Step::new("check", step("check")).compensate(|_ctx| async { Ok(()) }));
    }
    saga.step(
        Step::new("charge", step("charge"))
            .pivot()
            .timeout(Duration::from_secs(3_600)),
    )
    .timeout(Duration::from_secs(86_400))
}

async fn open(sim: &Simulation, sagas: Vec<Saga<u64>>) -> Result<Engine, EngineError> {
    let mut builder = Engine::builder(sim.dir()).options(sim.options());
    for saga in sagas {
        builder = builder.register(saga)?;
    }
    builder.open().await
}

/// Starts a saga on version 1 and leaves it in flight (its pivot hangs),
/// then shuts the engine down.
async fn leave_one_in_flight(sim: &Simulation, journal: &Arc<Journal>) -> SagaId {
    let engine = open(sim, vec![order(1, journal, true)]).await.unwrap();
    let id = engine.start("order", &1u64).await.unwrap();
    while !journal.entries().iter().any(|e| e.starts_with("v1 charge")) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    engine.shutdown().await.unwrap();
    id
}

#[test]
fn a_saga_ends_on_its_version_while_new_starts_take_the_newest() {
    simulate(21, |sim| async move {
        let journal = Arc::new(Journal::default());
        let old = leave_one_in_flight(&sim, &journal).await;
        let both = vec![order(1, &journal, false), order(2, &journal, false)];
        let engine = open(&sim, both).await.unwrap();
        let view = engine.wait(old).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed);
        assert_eq!(view.version, Some(1));
        assert_eq!(view.steps.len(), 2, "version 1's two steps");
        let new = engine.start("order", &2u64).await.unwrap();
        let view = engine.wait(new).await.unwrap();
        assert_eq!(view.version, Some(2));
        assert_eq!(view.steps.len(), 3);
        let entries = journal.entries();
        assert!(entries.contains(&format!("v1 charge {old}")), "{entries:?}");
        assert!(entries.contains(&format!("v2 check {new}")), "{entries:?}");
        assert!(!entries.contains(&format!("v2 check {old}")), "{entries:?}");
        engine.shutdown().await.unwrap();
    });
}

#[test]
fn a_version_registered_with_other_steps_is_refused_at_open() {
    simulate(22, |sim| async move {
        let journal = Arc::new(Journal::default());
        let old = leave_one_in_flight(&sim, &journal).await;
        // Version 2's steps registered as version 1: new code at old
        // positions. Refused, naming the definition and version.
        let changed = order(2, &journal, false).version(1);
        let error = open(&sim, vec![changed]).await.unwrap_err();
        match &error {
            EngineError::DefinitionChanged {
                definition,
                version,
                saga,
                registered,
                ..
            } => {
                assert_eq!((definition.as_str(), *version, *saga), ("order", 1, old));
                assert_eq!(registered.len(), 3);
            }
            other => panic!("expected DefinitionChanged, got {other}"),
        }
        assert!(
            error.to_string().contains("check (Compensatable)"),
            "{error}"
        );
        // The right registration opens and finishes it.
        let engine = open(&sim, vec![order(1, &journal, false)]).await.unwrap();
        assert_eq!(
            engine.wait(old).await.unwrap().status,
            SagaStatus::Completed
        );
        engine.shutdown().await.unwrap();
    });
}

#[test]
fn a_saga_whose_version_is_not_registered_is_parked_visibly_until_it_is() {
    simulate(23, |sim| async move {
        let journal = Arc::new(Journal::default());
        let old = leave_one_in_flight(&sim, &journal).await;
        let engine = open(&sim, vec![order(2, &journal, false)]).await.unwrap();
        let view = engine.view(old).await.unwrap().unwrap();
        assert!(view.parked, "{view:?}");
        assert_eq!(view.status, SagaStatus::Running);
        let versions = engine.versions().await.unwrap();
        assert_eq!(
            versions,
            [VersionCount {
                definition: "order".into(),
                version: Some(1),
                registered: false,
                in_flight: 1,
            }]
        );
        let page = engine.list(Default::default()).await.unwrap();
        assert!(page.sagas.iter().any(|s| s.id == old && s.parked));
        engine.shutdown().await.unwrap();
        // Registered again: it resumes where it stood.
        let engine = open(
            &sim,
            vec![order(1, &journal, false), order(2, &journal, false)],
        )
        .await
        .unwrap();
        let view = engine.wait(old).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed);
        assert!(!view.parked);
        assert!(
            engine.versions().await.unwrap().is_empty(),
            "nothing in flight"
        );
        engine.shutdown().await.unwrap();
    });
}

#[test]
fn a_changed_version_is_refused_even_when_finished_sagas_of_it_come_first() {
    simulate(24, |sim| async move {
        let journal = Arc::new(Journal::default());
        // Finished sagas of version 1 in both partitions, then one in flight.
        let engine = open(&sim, vec![order(1, &journal, false)]).await.unwrap();
        for n in 0..4u64 {
            let id = engine.start("order", &n).await.unwrap();
            engine.wait(id).await.unwrap();
        }
        engine.shutdown().await.unwrap();
        let in_flight = leave_one_in_flight(&sim, &journal).await;
        let changed = order(2, &journal, false).version(1);
        let error = open(&sim, vec![changed]).await.unwrap_err();
        assert!(
            matches!(error, EngineError::DefinitionChanged { saga, .. } if saga == in_flight),
            "{error}"
        );
    });
}
