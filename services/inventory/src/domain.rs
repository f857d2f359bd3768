//! Stock rules: all-or-nothing reservation of an order's lines. Pure: no I/O.

use std::collections::BTreeMap;

/// Where an order's reservation stands (stored as text in `reservations.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Its units are held for the order.
    Reserved,
    /// Refused (unknown sku, out of stock, bad lines); nothing is held.
    Failed,
    /// Given back by the saga's compensation, or released before it was ever reserved.
    Released,
}

impl ReservationStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "RESERVED",
            ReservationStatus::Failed => "FAILED",
            ReservationStatus::Released => "RELEASED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<ReservationStatus> {
        match s {
            "RESERVED" => Some(ReservationStatus::Reserved),
            "FAILED" => Some(ReservationStatus::Failed),
            "RELEASED" => Some(ReservationStatus::Released),
            _ => None,
        }
    }
}

/// Quantities per sku, merged over an order's lines and sorted by sku (the order in which rows
/// are locked, so two reservations never deadlock).
pub fn merge_lines(lines: &[(String, i32)]) -> Result<BTreeMap<String, i64>, String> {
    let mut merged = BTreeMap::new();
    if lines.is_empty() {
        return Err("nothing to reserve".into());
    }
    for (sku, quantity) in lines {
        if *quantity <= 0 {
            return Err(format!("sku {sku} has quantity {quantity}, it must be positive"));
        }
        *merged.entry(sku.clone()).or_insert(0) += i64::from(*quantity);
    }
    Ok(merged)
}

/// Decides a reservation: every sku must be known and have enough on hand, or nothing is
/// reserved. `on_hand` holds the current units of the skus that exist.
pub fn decide_reservation(wanted: &BTreeMap<String, i64>, on_hand: &BTreeMap<String, i64>) -> Result<(), String> {
    let mut short = Vec::new();
    for (sku, want) in wanted {
        match on_hand.get(sku) {
            None => return Err(format!("sku {sku} is unknown")),
            Some(have) if have < want => short.push(format!("sku {sku} has {have} left, {want} requested")),
            Some(_) => {}
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!("out of stock: {}", short.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(items: &[(&str, i64)]) -> BTreeMap<String, i64> {
        items.iter().map(|(s, q)| (s.to_string(), *q)).collect()
    }

    #[test]
    fn merges_repeated_skus() {
        let m = merge_lines(&[("A".into(), 2), ("B".into(), 1), ("A".into(), 3)]).unwrap();
        assert_eq!(m, stock(&[("A", 5), ("B", 1)]));
    }

    #[test]
    fn refuses_empty_and_non_positive_lines() {
        assert!(merge_lines(&[]).is_err());
        assert!(merge_lines(&[("A".into(), 0)]).is_err());
        assert!(merge_lines(&[("A".into(), -3)]).is_err());
    }

    #[test]
    fn reserves_when_everything_is_there() {
        assert_eq!(decide_reservation(&stock(&[("A", 5), ("B", 1)]), &stock(&[("A", 5), ("B", 9)])), Ok(()));
    }

    #[test]
    fn all_or_nothing_names_every_short_sku() {
        let e = decide_reservation(&stock(&[("A", 6), ("B", 1), ("C", 3)]), &stock(&[("A", 5), ("B", 9), ("C", 0)])).unwrap_err();
        assert_eq!(e, "out of stock: sku A has 5 left, 6 requested; sku C has 0 left, 3 requested");
    }

    #[test]
    fn unknown_sku_is_refused() {
        assert_eq!(decide_reservation(&stock(&[("X", 1)]), &stock(&[("A", 5)])), Err("sku X is unknown".into()));
    }

    proptest::proptest! {
        /// Applying only approved reservations never takes stock below zero.
        #[test]
        fn never_negative(initial in 0i64..50, asks in proptest::collection::vec(1i64..10, 0..40)) {
            let mut on_hand = stock(&[("A", initial)]);
            for ask in asks {
                let want = stock(&[("A", ask)]);
                if decide_reservation(&want, &on_hand).is_ok() {
                    *on_hand.get_mut("A").unwrap() -= ask;
                }
                proptest::prop_assert!(on_hand["A"] >= 0);
            }
        }
    }
}
