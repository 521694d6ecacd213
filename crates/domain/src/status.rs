//! Lifecycle states stored as TEXT columns, with the payment state machine of DESIGN §3.

use std::fmt;
use std::str::FromStr;

use sea_orm::{DeriveActiveEnum, EnumIter};
use serde::{Deserialize, Serialize};

/// A status string that names no known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownStatus {
    pub kind: &'static str,
    pub value: String,
}

/// Defines a status enum stored as TEXT: SeaORM active enum, serde, `as_str`, `FromStr`,
/// `Display` and `ALL`, all from one list of `Variant = "text"` pairs.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize,
            Deserialize,
        )]
        #[sea_orm(rs_type = "String", db_type = "Text")]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[sea_orm(string_value = $text)]
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored form (snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownStatus {
                        kind: stringify!($name),
                        value: s.to_owned(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// State of a payment.
    ///
    /// `pending → succeeded | failed | canceled | expired`;
    /// `succeeded → partially_refunded → refunded` (a partially refunded payment may be
    /// partially refunded again, or refunded in full). Terminal states never change.
    pub enum PaymentStatus {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
        /// The provider confirmed the payment can no longer be paid. Never set locally
        /// without asking the provider: a late success must still count.
        Expired = "expired",
        PartiallyRefunded = "partially_refunded",
        Refunded = "refunded",
    }
}

impl PaymentStatus {
    /// A paid payment's status once `refunded_minor` of its `amount_minor` went back:
    /// succeeded (nothing), partially refunded, or refunded (all of it).
    pub fn paid_and_refunded(refunded_minor: i64, amount_minor: i64) -> Self {
        if refunded_minor <= 0 {
            PaymentStatus::Succeeded
        } else if refunded_minor >= amount_minor {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        }
    }

    /// True when no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PaymentStatus::Failed
                | PaymentStatus::Canceled
                | PaymentStatus::Expired
                | PaymentStatus::Refunded
        )
    }

    /// True when money was received (and not fully returned): the states that grant access.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded
        )
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_transition_to(self, next: PaymentStatus) -> bool {
        next.allowed_predecessors().contains(&self)
    }

    /// The states a payment may be in for a move to `self`; the `status IN (…)` of the
    /// conditional `UPDATE` that performs the transition.
    pub fn allowed_predecessors(self) -> &'static [PaymentStatus] {
        use PaymentStatus::*;
        match self {
            Pending => &[],
            Succeeded | Failed | Canceled | Expired => &[Pending],
            PartiallyRefunded | Refunded => &[Succeeded, PartiallyRefunded],
        }
    }
}

text_enum! {
    /// State of a refund request.
    pub enum RefundStatus {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl RefundStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, RefundStatus::Pending)
    }
}

text_enum! {
    /// State of a crypto invoice. Only `open` invoices reserve their expected amount
    /// (a partial unique index), so an amount is reusable once its invoice is settled.
    pub enum CryptoInvoiceStatus {
        /// Waiting for a transfer of exactly the expected amount.
        Open = "open",
        /// A matching transfer of the exact amount arrived in time.
        Paid = "paid",
        /// A transfer arrived in time but for less than expected.
        Underpaid = "underpaid",
        /// A transfer arrived in time for more than expected (paid, and flagged).
        Overpaid = "overpaid",
        /// A transfer arrived after the invoice expired.
        Late = "late",
        /// Expired with no transfer.
        Expired = "expired",
        Canceled = "canceled",
    }
}

impl CryptoInvoiceStatus {
    pub fn is_open(self) -> bool {
        matches!(self, CryptoInvoiceStatus::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus::*;
    use proptest::prelude::*;

    #[test]
    fn a_paid_payment_is_succeeded_partly_or_fully_refunded_by_what_went_back() {
        assert_eq!(PaymentStatus::paid_and_refunded(0, 19_900), Succeeded);
        assert_eq!(
            PaymentStatus::paid_and_refunded(1, 19_900),
            PartiallyRefunded
        );
        assert_eq!(
            PaymentStatus::paid_and_refunded(19_899, 19_900),
            PartiallyRefunded
        );
        assert_eq!(PaymentStatus::paid_and_refunded(19_900, 19_900), Refunded);
    }

    #[test]
    fn strings_round_trip() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(*status));
            assert_eq!(
                serde_json::to_string(status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        assert_eq!(PartiallyRefunded.as_str(), "partially_refunded");
        assert!("PENDING".parse::<PaymentStatus>().is_err());
        for status in RefundStatus::ALL {
            assert_eq!(status.as_str().parse::<RefundStatus>(), Ok(*status));
        }
        for status in CryptoInvoiceStatus::ALL {
            assert_eq!(status.as_str().parse::<CryptoInvoiceStatus>(), Ok(*status));
        }
        // The partial unique index of crypto_invoices matches this literal.
        assert_eq!(CryptoInvoiceStatus::Open.as_str(), "open");
    }

    #[test]
    fn the_designed_transitions() {
        for next in [Succeeded, Failed, Canceled, Expired] {
            assert!(Pending.can_transition_to(next), "pending -> {next}");
        }
        assert!(!Pending.can_transition_to(Refunded));
        assert!(!Pending.can_transition_to(PartiallyRefunded));
        assert!(Succeeded.can_transition_to(PartiallyRefunded));
        assert!(Succeeded.can_transition_to(Refunded));
        assert!(PartiallyRefunded.can_transition_to(PartiallyRefunded));
        assert!(PartiallyRefunded.can_transition_to(Refunded));
        assert!(!Succeeded.can_transition_to(Failed));
        assert!(!Succeeded.can_transition_to(Succeeded));
        assert_eq!(
            PaymentStatus::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .collect::<Vec<_>>(),
            [&Failed, &Canceled, &Expired, &Refunded]
        );
    }

    fn any_status() -> impl Strategy<Value = PaymentStatus> {
        prop::sample::select(PaymentStatus::ALL.to_vec())
    }

    /// How far along the lifecycle a state is; legal moves never decrease it.
    fn progress(status: PaymentStatus) -> u8 {
        match status {
            Pending => 0,
            Succeeded | Failed | Canceled | Expired => 1,
            PartiallyRefunded => 2,
            Refunded => 3,
        }
    }

    proptest! {
        #[test]
        fn terminal_states_never_move(from in any_status(), to in any_status()) {
            if from.is_terminal() {
                prop_assert!(!from.can_transition_to(to));
            }
        }

        #[test]
        fn nothing_returns_to_pending(from in any_status()) {
            prop_assert!(!from.can_transition_to(Pending));
        }

        #[test]
        fn predecessors_agree_with_transitions(from in any_status(), to in any_status()) {
            prop_assert_eq!(
                from.can_transition_to(to),
                to.allowed_predecessors().contains(&from)
            );
        }

        #[test]
        fn any_sequence_of_notifications_only_moves_forward(
            attempts in prop::collection::vec(any_status(), 0..30),
        ) {
            let mut current = Pending;
            for next in attempts {
                let before = current;
                // A stale or illegal update is a no-op, as in the conditional UPDATE.
                if current.can_transition_to(next) {
                    current = next;
                }
                prop_assert!(progress(current) >= progress(before));
                if before.is_terminal() {
                    prop_assert_eq!(current, before);
                }
            }
        }
    }
}
