//! The engine's clock: wall time at open plus tokio's monotonic time since,
//! so that tests running on tokio's paused clock get virtual time. The
//! model never reads it: every time `decide` uses is passed in and
//! recorded in the events.

use skald_model::Millis;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_at_open: Millis,
    opened: tokio::time::Instant,
}

impl Clock {
    /// Wall time at open (`None`), or a fixed start (simulations, so that
    /// recorded times repeat).
    pub(crate) fn new(start: Option<Millis>) -> Clock {
        let wall = start.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as Millis)
                .unwrap_or(0)
        });
        Clock {
            wall_at_open: wall,
            opened: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Millis {
        self.wall_at_open + self.opened.elapsed().as_millis() as Millis
    }

    /// The instant on tokio's clock at which this clock reads `at`.
    pub(crate) fn instant_of(&self, at: Millis) -> tokio::time::Instant {
        self.opened + std::time::Duration::from_millis(at.saturating_sub(self.wall_at_open))
    }
}
