//! Credit and risk rules. Pure: no I/O.

/// Where an order's authorization stands (stored as text in `authorizations.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationStatus {
    /// The amount is held against the customer's credit.
    Authorized,
    /// Refused (unknown customer, other currency, over the limit); nothing is held.
    Declined,
    /// Given back by the saga's compensation, or voided before it was ever authorized.
    Voided,
}

impl AuthorizationStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationStatus::Authorized => "AUTHORIZED",
            AuthorizationStatus::Declined => "DECLINED",
            AuthorizationStatus::Voided => "VOIDED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<AuthorizationStatus> {
        match s {
            "AUTHORIZED" => Some(AuthorizationStatus::Authorized),
            "DECLINED" => Some(AuthorizationStatus::Declined),
            "VOIDED" => Some(AuthorizationStatus::Voided),
            _ => None,
        }
    }
}

/// A customer's account as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// ISO 4217 code of the account.
    pub currency: String,
    /// Most that may be authorized at once, in minor units.
    pub credit_limit_minor: i64,
    /// Currently authorized, in minor units.
    pub authorized_minor: i64,
}

/// Decides an authorization: `Ok(())` to authorize, or why it is declined.
pub fn decide_authorization(account: Option<&Account>, customer_id: &str, amount_minor: i64, currency: &str) -> Result<(), String> {
    let Some(account) = account else {
        return Err(format!("customer {customer_id} has no account"));
    };
    if amount_minor <= 0 {
        return Err(format!("amount {amount_minor} must be positive"));
    }
    if account.currency != currency {
        return Err(format!("account of customer {customer_id} is in {}, payment is in {currency}", account.currency));
    }
    let available = account.credit_limit_minor - account.authorized_minor;
    if amount_minor > available {
        return Err(format!("insufficient credit: {available} {currency} available, {amount_minor} requested"));
    }
    Ok(())
}

/// Orders above this total (in minor units of their currency) need a manual fraud review: the
/// risk check of the order saga (v2) rejects them.
pub const RISK_REVIEW_ABOVE_MINOR: i64 = 500_000;

/// The outcome of a risk check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskAssessment {
    /// 0 (no risk) to 100: the order total as a share of [`RISK_REVIEW_ABOVE_MINOR`].
    pub score: i32,
    /// Why the order is rejected; `None` when its risk is acceptable.
    pub rejected: Option<String>,
}

/// Assesses the fraud risk of charging `amount_minor` for an order: the larger the total, the
/// riskier; above [`RISK_REVIEW_ABOVE_MINOR`] the order is rejected for a manual review. A
/// non-positive amount is rejected too (it could only be a forged order).
pub fn assess_risk(amount_minor: i64, currency: &str) -> RiskAssessment {
    if amount_minor <= 0 {
        return RiskAssessment { score: 100, rejected: Some(format!("amount {amount_minor} {currency} must be positive")) };
    }
    let score = (amount_minor.saturating_mul(100) / RISK_REVIEW_ABOVE_MINOR).min(100) as i32;
    let rejected = (amount_minor > RISK_REVIEW_ABOVE_MINOR)
        .then(|| format!("order total {amount_minor} {currency} is above {RISK_REVIEW_ABOVE_MINOR}: it needs a manual fraud review"));
    RiskAssessment { score, rejected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(limit: i64, used: i64) -> Account {
        Account { currency: "EUR".into(), credit_limit_minor: limit, authorized_minor: used }
    }

    #[test]
    fn authorizes_within_the_limit_including_exactly_at_it() {
        assert_eq!(decide_authorization(Some(&account(1000, 400)), "c", 600, "EUR"), Ok(()));
    }

    #[test]
    fn declines_over_the_limit() {
        let e = decide_authorization(Some(&account(1000, 400)), "c", 601, "EUR").unwrap_err();
        assert_eq!(e, "insufficient credit: 600 EUR available, 601 requested");
    }

    #[test]
    fn declines_unknown_customers_wrong_currency_and_non_positive_amounts() {
        assert!(decide_authorization(None, "c", 1, "EUR").unwrap_err().contains("no account"));
        assert!(decide_authorization(Some(&account(1000, 0)), "c", 1, "USD").unwrap_err().contains("in EUR"));
        assert!(decide_authorization(Some(&account(1000, 0)), "c", 0, "EUR").is_err());
    }

    #[test]
    fn risk_grows_with_the_total_and_rejects_above_the_review_line() {
        assert_eq!(assess_risk(RISK_REVIEW_ABOVE_MINOR / 2, "EUR"), RiskAssessment { score: 50, rejected: None });
        assert_eq!(assess_risk(RISK_REVIEW_ABOVE_MINOR, "EUR"), RiskAssessment { score: 100, rejected: None });
        let over = assess_risk(RISK_REVIEW_ABOVE_MINOR + 1, "EUR");
        assert_eq!(over.score, 100);
        assert!(over.rejected.unwrap().contains("manual fraud review"));
        assert!(assess_risk(0, "EUR").rejected.unwrap().contains("must be positive"));
        assert_eq!(assess_risk(i64::MAX, "EUR").score, 100);
    }

    proptest::proptest! {
        /// Authorizing only what the rules allow never exceeds the limit.
        #[test]
        fn never_over_limit(limit in 0i64..10_000, asks in proptest::collection::vec(1i64..3_000, 0..30)) {
            let mut a = account(limit, 0);
            for ask in asks {
                if decide_authorization(Some(&a), "c", ask, "EUR").is_ok() {
                    a.authorized_minor += ask;
                }
                proptest::prop_assert!(a.authorized_minor <= a.credit_limit_minor);
            }
        }
    }
}
