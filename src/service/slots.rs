//! Match slots: at most `max_concurrent_matches` matches at once, and at most
//! `max_concurrent_matches_per_partner` of them for one partner. The limits are
//! given at each acquisition, so a reload changes them for the next match.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which limit refused a match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    #[error("too many concurrent matches (max_concurrent_matches = {0}); try again later")]
    Total(usize),
    #[error("this partner already runs {0} matches (max_concurrent_matches_per_partner = {0}); try again later")]
    Partner(usize),
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_partner: HashMap<String, usize>,
}

/// The slots in use.
#[derive(Clone, Default)]
pub(crate) struct Slots(Arc<Mutex<Counts>>);

/// One slot, given back when dropped.
pub(crate) struct Slot {
    slots: Slots,
    partner: String,
}

impl Slots {
    pub fn acquire(&self, partner: &str, max_total: usize, max_per_partner: usize) -> Result<Slot, SlotError> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= max_total {
            return Err(SlotError::Total(max_total));
        }
        let mine = counts.by_partner.get(partner).copied().unwrap_or(0);
        if mine >= max_per_partner {
            return Err(SlotError::Partner(max_per_partner));
        }
        counts.total += 1;
        counts.by_partner.insert(partner.to_owned(), mine + 1);
        Ok(Slot { slots: self.clone(), partner: partner.to_owned() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_partner.get_mut(&self.partner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_partner.remove(&self.partner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_partner_caps_and_release() {
        let slots = Slots::default();
        let a1 = slots.acquire("a", 3, 2).unwrap();
        let _a2 = slots.acquire("a", 3, 2).unwrap();
        assert_eq!(slots.acquire("a", 3, 2).err(), Some(SlotError::Partner(2)));
        let _b1 = slots.acquire("b", 3, 2).unwrap();
        assert_eq!(slots.acquire("c", 3, 2).err(), Some(SlotError::Total(3)));
        drop(a1);
        slots.acquire("a", 3, 2).unwrap();
    }
}
