//! Topic names and which messages travel on which topic.

use serde::{Deserialize, Serialize};

/// The six topics of the system. Commands go to the participant that executes them; events come
/// from the service that owns the aggregate. Every record is keyed by the order id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TopicKind {
    /// `PlaceOrder`, `ApproveOrder`, `RejectOrder`.
    OrderCommands,
    /// `ReserveStock`, `ReleaseStock`.
    InventoryCommands,
    /// `AuthorizePayment`, `VoidPayment`, `CheckRisk` (order saga v2).
    PaymentCommands,
    /// `OrderCreated`, `OrderApproved`, `OrderRejected`.
    OrderEvents,
    /// `StockReserved`, `StockReservationFailed`, `StockReleased`.
    InventoryEvents,
    /// `PaymentAuthorized`, `PaymentDeclined`, `PaymentVoided`, `RiskAccepted`, `RiskRejected`.
    PaymentEvents,
}

impl TopicKind {
    /// Every topic kind, in a stable order.
    pub const ALL: [TopicKind; 6] = [
        TopicKind::OrderCommands,
        TopicKind::InventoryCommands,
        TopicKind::PaymentCommands,
        TopicKind::OrderEvents,
        TopicKind::InventoryEvents,
        TopicKind::PaymentEvents,
    ];

    /// The topic's name after the prefix, e.g. `order.commands`.
    pub fn suffix(self) -> &'static str {
        match self {
            TopicKind::OrderCommands => "order.commands",
            TopicKind::InventoryCommands => "inventory.commands",
            TopicKind::PaymentCommands => "payment.commands",
            TopicKind::OrderEvents => "order.events",
            TopicKind::InventoryEvents => "inventory.events",
            TopicKind::PaymentEvents => "payment.events",
        }
    }
}

/// Suffix of a dead-letter topic: `saga.order.commands` dead-letters to `saga.order.commands.dlt`.
pub const DLT_SUFFIX: &str = ".dlt";

/// Resolved topic names for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `{prefix}.{kind}`; the default prefix is `saga`.
    pub fn new(prefix: impl Into<String>) -> Topics {
        Topics { prefix: prefix.into() }
    }

    /// The full name of a topic.
    pub fn name(&self, kind: TopicKind) -> String {
        if self.prefix.is_empty() {
            kind.suffix().to_string()
        } else {
            format!("{}.{}", self.prefix, kind.suffix())
        }
    }

    /// The kind of a full topic name, if it is one of ours.
    pub fn kind_of(&self, topic: &str) -> Option<TopicKind> {
        TopicKind::ALL.into_iter().find(|k| self.name(*k) == topic)
    }

    /// The dead-letter topic of a consumed topic.
    pub fn dlt(topic: &str) -> String {
        format!("{topic}{DLT_SUFFIX}")
    }

    /// Every topic the system uses, dead-letter topics included.
    pub fn all_with_dlts(&self) -> Vec<String> {
        TopicKind::ALL
            .into_iter()
            .flat_map(|k| {
                let t = self.name(k);
                [Topics::dlt(&t), t]
            })
            .collect()
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics::new("saga")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lookup_round_trip() {
        let t = Topics::new("acme");
        for k in TopicKind::ALL {
            assert_eq!(t.kind_of(&t.name(k)), Some(k));
        }
        assert_eq!(t.name(TopicKind::OrderCommands), "acme.order.commands");
        assert_eq!(Topics::dlt("acme.order.commands"), "acme.order.commands.dlt");
        assert_eq!(t.kind_of("acme.order.commands.dlt"), None);
        assert_eq!(t.all_with_dlts().len(), 12);
    }
}
