//! The decode budget: the bytes all request bodies of one process may hold
//! together while they are read, decompressed and parsed.
//!
//! A request count alone does not bound memory (one 65 KB gzip body inflates
//! to 64 MiB, and an array of a million `1`s parses into a million errors), so
//! every byte kept is reserved here first, as it arrives. A request that cannot
//! get its next share within [`WAIT`] is refused with 503: it releases what it
//! held, so requests never wait on each other for long.

use std::sync::Arc;
use std::time::Duration;

use pulse_core::codec::body::BodyError;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits for its next share of the budget.
pub const WAIT: Duration = Duration::from_secs(2);

/// The budget is counted in units of this many bytes, reserved a step at a
/// time so that a stream of small chunks does not touch the semaphore for each.
const UNIT: usize = 1 << 10;
const STEP_UNITS: u32 = 64;

/// One process's decode budget; clones share it.
#[derive(Clone, Debug)]
pub struct DecodeBudget {
    units: Arc<Semaphore>,
    bytes: usize,
}

/// The budget was full for [`WAIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFull;

impl From<BudgetFull> for BodyError {
    fn from(_: BudgetFull) -> BodyError {
        BodyError::Busy
    }
}

impl DecodeBudget {
    pub fn new(bytes: usize) -> DecodeBudget {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        DecodeBudget {
            units: Arc::new(Semaphore::new(units as usize)),
            bytes,
        }
        .capped()
    }

    /// The size as counted (whole units, at most `u32::MAX` of them).
    fn capped(mut self) -> DecodeBudget {
        self.bytes = self.units_total() * UNIT;
        self
    }

    /// The budget's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes reserved by requests now.
    pub fn in_use(&self) -> usize {
        (self.units_total() - self.units.available_permits()) * UNIT
    }

    fn units_total(&self) -> usize {
        u32::try_from(self.bytes.div_ceil(UNIT)).unwrap_or(u32::MAX) as usize
    }

    /// An empty reservation for one request; it grows with [`Reservation::take`]
    /// and gives everything back when dropped.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: None,
            held_units: 0,
            used: 0,
        }
    }
}

/// What one request holds of the budget.
#[derive(Debug)]
pub struct Reservation {
    budget: DecodeBudget,
    held: Option<OwnedSemaphorePermit>,
    held_units: u32,
    used: usize,
}

impl Reservation {
    /// Bytes this request has charged so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Charges `bytes` more, waiting up to [`WAIT`] for room. A refused
    /// charge leaves the reservation as it was.
    pub async fn take(&mut self, bytes: usize) -> Result<(), BudgetFull> {
        let used = self.used.saturating_add(bytes);
        let Some(more) = self.missing_units(used) else {
            self.used = used;
            return Ok(());
        };
        if more as usize + self.held_units as usize > self.budget.units_total() {
            // More than the whole budget: waiting cannot help.
            return Err(BudgetFull);
        }
        let acquire = Arc::clone(&self.budget.units).acquire_many_owned(more);
        match tokio::time::timeout(WAIT, acquire).await {
            Ok(Ok(permit)) => {
                self.hold(permit, more);
                self.used = used;
                Ok(())
            }
            // The semaphore is never closed; the timeout is the only case.
            Ok(Err(_)) | Err(_) => Err(BudgetFull),
        }
    }

    /// [`Reservation::take`] from a blocking thread (decompression and parsing
    /// run on one), through the runtime `handle`.
    pub fn take_blocking(&mut self, handle: &Handle, bytes: usize) -> Result<(), BudgetFull> {
        handle.block_on(self.take(bytes))
    }

    /// The units to acquire so that `used` bytes are covered, if the ones
    /// held do not cover them: a whole step, or more for a large charge.
    fn missing_units(&self, used: usize) -> Option<u32> {
        let needed = u32::try_from(used.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if needed <= self.held_units {
            return None;
        }
        Some((needed - self.held_units).max(STEP_UNITS))
    }

    fn hold(&mut self, permit: OwnedSemaphorePermit, units: u32) {
        self.held_units += units;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reservation_holds_its_bytes_until_dropped() {
        let budget = DecodeBudget::new(1 << 20);
        let mut first = budget.reservation();
        first.take(700 << 10).await.unwrap();
        assert!(budget.in_use() >= 700 << 10);
        let mut second = budget.reservation();
        assert_eq!(second.take(400 << 10).await, Err(BudgetFull));
        drop(first);
        second.take(400 << 10).await.unwrap();
        assert_eq!(second.used(), 400 << 10);
    }

    #[tokio::test]
    async fn small_charges_reserve_a_step_at_a_time() {
        let budget = DecodeBudget::new(1 << 20);
        let mut reservation = budget.reservation();
        for _ in 0..100 {
            reservation.take(1).await.unwrap();
        }
        assert_eq!(budget.in_use(), STEP_UNITS as usize * UNIT);
        assert_eq!(reservation.used(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_blocking_thread_charges_through_the_runtime() {
        let budget = DecodeBudget::new(1 << 20);
        let handle = Handle::current();
        let mut reservation = budget.reservation();
        let (reservation, result) = tokio::task::spawn_blocking(move || {
            let result = reservation.take_blocking(&handle, 2 << 20);
            (reservation, result)
        })
        .await
        .unwrap();
        assert_eq!(result, Err(BudgetFull));
        drop(reservation);
        assert_eq!(budget.in_use(), 0);
    }
}
