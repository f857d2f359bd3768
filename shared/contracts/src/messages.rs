//! One Rust type per Avro schema, and [`Message`], the sum of them all.
//!
//! Field order and types mirror `schemas/**.avsc` exactly; `schemas::tests` fails when they drift.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use crate::{Envelope, TopicKind};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "saga.order")]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Units ordered; must be positive.
    pub quantity: i32,
    /// Price of one unit in minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 code of `unit_price_minor`.
    pub currency: String,
}

/// One line of a stock reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "saga.inventory")]
pub struct StockLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Units to reserve.
    pub quantity: i32,
}

// Field types are matched as identifiers (`String`, `Vec<OrderLine>`), not `ty` fragments: the
// AvroSchema derive cannot see through the invisible group a `ty` fragment becomes.
macro_rules! message_types {
    ($(
        $(#[$doc:meta])*
        $name:ident in $ns:literal on $topic:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ident $(<$inner:ident>)?),* $(,)? }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
            #[avro(namespace = $ns)]
            pub struct $name {
                /// Ids, type, saga and cause of this message.
                pub envelope: Envelope,
                /// The order (and saga) this message is about; also the record key.
                pub order_id: String,
                $($(#[$fdoc])* pub $field: $ty $(<$inner>)?,)*
            }

            impl $name {
                /// Full Avro name, which is also the schema's subject (RecordNameStrategy).
                pub const FULL_NAME: &'static str = concat!($ns, ".", stringify!($name));
            }

            impl From<$name> for Message {
                fn from(m: $name) -> Message {
                    Message::$name(m)
                }
            }
        )*

        /// Any command or event of the system.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $($(#[$doc])* $name($name),)*
        }

        impl Message {
            /// Every full Avro name, in declaration order.
            pub const FULL_NAMES: &'static [&'static str] = &[$($name::FULL_NAME,)*];

            /// The message's envelope.
            pub fn envelope(&self) -> &Envelope {
                match self { $(Message::$name(m) => &m.envelope,)* }
            }

            /// The message's envelope, mutably.
            pub fn envelope_mut(&mut self) -> &mut Envelope {
                match self { $(Message::$name(m) => &mut m.envelope,)* }
            }

            /// The order id, which is the record key of every message.
            pub fn order_id(&self) -> &str {
                match self { $(Message::$name(m) => &m.order_id,)* }
            }

            /// The full Avro name of this message's type.
            pub fn full_name(&self) -> &'static str {
                match self { $(Message::$name(_) => $name::FULL_NAME,)* }
            }

            /// The topic this message travels on.
            pub fn topic_kind(&self) -> TopicKind {
                match self { $(Message::$name(_) => TopicKind::$topic,)* }
            }

            /// The topic a type travels on, by full Avro name.
            pub fn topic_kind_of(full_name: &str) -> Option<TopicKind> {
                match full_name { $(n if n == $name::FULL_NAME => Some(TopicKind::$topic),)* _ => None }
            }

            /// The Avro schema of a type, by full Avro name, as derived from the Rust type.
            pub fn schema_of(full_name: &str) -> Option<apache_avro::Schema> {
                match full_name { $(n if n == $name::FULL_NAME => Some($name::get_schema()),)* _ => None }
            }

            /// Serializes to a serde value tree (for encoders that take `impl Serialize`).
            pub fn to_avro_value(&self) -> Result<apache_avro::types::Value, apache_avro::Error> {
                match self { $(Message::$name(m) => apache_avro::to_value(m),)* }
            }

            /// Builds a message of type `full_name` from a value already resolved against its schema.
            pub fn from_avro_value(full_name: &str, value: &apache_avro::types::Value) -> Result<Message, FromValueError> {
                match full_name {
                    $(n if n == $name::FULL_NAME => Ok(Message::$name(apache_avro::from_value::<$name>(value).map_err(FromValueError::Decode)?)),)*
                    other => Err(FromValueError::UnknownType(other.to_string())),
                }
            }

            /// A short name for logs, e.g. `PlaceOrder`.
            pub fn short_name(&self) -> &'static str {
                match self { $(Message::$name(_) => stringify!($name),)* }
            }
        }
    };
}

/// Why a value could not become a [`Message`].
#[derive(Debug)]
pub enum FromValueError {
    /// No message type has that full name.
    UnknownType(String),
    /// The value does not fit the type.
    Decode(apache_avro::Error),
}

impl std::error::Error for FromValueError {}

impl std::fmt::Display for FromValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FromValueError::UnknownType(t) => write!(f, "no message type is named {t}"),
            FromValueError::Decode(e) => write!(f, "value does not fit its type: {e}"),
        }
    }
}

message_types! {
    /// Command: a client asks for an order to be placed.
    PlaceOrder in "saga.order" on OrderCommands {
        /// The customer whose credit pays for the order.
        customer_id: String,
        /// ISO 4217 code every line must use.
        currency: String,
        /// What is ordered; at least one line.
        lines: Vec<OrderLine>,
        /// Added in schema v2: a promotion code the customer entered; `None` when absent and in
        /// every record written with v1.
        promotion_code: Option<String>,
    }
    /// Command from the orchestrator: the saga succeeded, approve the order.
    ApproveOrder in "saga.order" on OrderCommands {}
    /// Command from the orchestrator: the saga failed and was compensated, reject the order.
    RejectOrder in "saga.order" on OrderCommands {
        /// Why, for people.
        reason: String,
    }
    /// Event: an order passed validation and is PENDING; starts its saga.
    OrderCreated in "saga.order" on OrderEvents {
        /// The customer whose credit pays for the order.
        customer_id: String,
        /// ISO 4217 code of every amount.
        currency: String,
        /// Sum of quantity × unit price over the lines.
        total_minor: i64,
        /// What is ordered.
        lines: Vec<OrderLine>,
    }
    /// Event: the order is APPROVED.
    OrderApproved in "saga.order" on OrderEvents {}
    /// Event: the order is REJECTED (by validation or by its saga).
    OrderRejected in "saga.order" on OrderEvents {
        /// Why, for people.
        reason: String,
    }
    /// Command: reserve all lines of an order, all or nothing.
    ReserveStock in "saga.inventory" on InventoryCommands {
        /// What to reserve.
        lines: Vec<StockLine>,
    }
    /// Command (compensation): release the order's reservation, if any. Idempotent.
    ReleaseStock in "saga.inventory" on InventoryCommands {
        /// Why, for people.
        reason: String,
    }
    /// Event: every line of the order is reserved.
    StockReserved in "saga.inventory" on InventoryEvents {}
    /// Event: nothing was reserved.
    StockReservationFailed in "saga.inventory" on InventoryEvents {
        /// Why, for people.
        reason: String,
    }
    /// Event: the reservation is released.
    StockReleased in "saga.inventory" on InventoryEvents {
        /// False when there was no reservation to release.
        released: bool,
    }
    /// Command: authorize the order total against the customer's credit.
    AuthorizePayment in "saga.payment" on PaymentCommands {
        /// The customer to charge.
        customer_id: String,
        /// Amount in minor units.
        amount_minor: i64,
        /// ISO 4217 code of the amount.
        currency: String,
    }
    /// Command (compensation): void the order's authorization, if any. Idempotent.
    VoidPayment in "saga.payment" on PaymentCommands {
        /// Why, for people.
        reason: String,
    }
    /// Event: the amount is authorized.
    PaymentAuthorized in "saga.payment" on PaymentEvents {
        /// The authorization's id.
        authorization_id: String,
        /// Amount in minor units.
        amount_minor: i64,
        /// ISO 4217 code of the amount.
        currency: String,
    }
    /// Event: the authorization was refused.
    PaymentDeclined in "saga.payment" on PaymentEvents {
        /// Why, for people.
        reason: String,
    }
    /// Command (order saga v2): assess the fraud risk of the order. Has no effect to undo.
    CheckRisk in "saga.payment" on PaymentCommands {
        /// The customer to charge.
        customer_id: String,
        /// Order total in minor units.
        amount_minor: i64,
        /// ISO 4217 code of the amount.
        currency: String,
    }
    /// Event: the order's risk is acceptable.
    RiskAccepted in "saga.payment" on PaymentEvents {
        /// 0 (no risk) to 100.
        score: i32,
    }
    /// Event: the order's risk is too high.
    RiskRejected in "saga.payment" on PaymentEvents {
        /// 0 (no risk) to 100.
        score: i32,
        /// Why, for people.
        reason: String,
    }
    /// Event: the authorization is voided.
    PaymentVoided in "saga.payment" on PaymentEvents {
        /// False when there was no authorization to void.
        voided: bool,
    }
}
