//! Seed data: stock per sku and customer accounts, read from a TOML file.

use std::path::Path;

use serde::Deserialize;

/// The seed shipped with the project (`deploy/seed/dev.toml`).
pub const DEV_SEED: &str = include_str!("../../../deploy/seed/dev.toml");

/// Stock and accounts to load before orders flow.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Units on hand per sku.
    #[serde(default)]
    pub stock: Vec<StockItem>,
    /// Customer accounts.
    #[serde(default)]
    pub customers: Vec<Customer>,
}

/// One sku's stock.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StockItem {
    /// Stock keeping unit.
    pub sku: String,
    /// Units on hand.
    pub on_hand: i64,
}

/// One customer account.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    /// Customer id.
    pub customer_id: String,
    /// ISO 4217 code of the account.
    pub currency: String,
    /// Credit limit in minor units.
    pub credit_limit_minor: i64,
}

impl Seed {
    /// Parses seed TOML.
    pub fn parse(text: &str) -> anyhow::Result<Seed> {
        Ok(toml::from_str(text)?)
    }

    /// Reads a seed file.
    pub fn read(path: &Path) -> anyhow::Result<Seed> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading seed file {}: {e}", path.display()))?;
        Seed::parse(&text).map_err(|e| anyhow::anyhow!("seed file {}: {e}", path.display()))
    }

    /// The shipped development seed.
    pub fn dev() -> Seed {
        Seed::parse(DEV_SEED).expect("the shipped seed file parses")
    }

    /// Loads the stock into an inventory database.
    pub async fn apply_stock(&self, db: &saga_store::Db) -> Result<(), sqlx::Error> {
        let items: Vec<_> = self.stock.iter().map(|s| (s.sku.clone(), s.on_hand)).collect();
        saga_inventory::set_stock(db, &items).await
    }

    /// Loads the accounts into a payment database.
    pub async fn apply_accounts(&self, db: &saga_store::Db) -> Result<(), sqlx::Error> {
        let accounts: Vec<_> = self.customers.iter().map(|c| (c.customer_id.clone(), c.currency.clone(), c.credit_limit_minor)).collect();
        saga_payment::set_accounts(db, &accounts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_seed_parses() {
        let s = Seed::dev();
        assert!(s.stock.iter().any(|i| i.sku == "RARE-GEM"));
        assert!(s.customers.iter().any(|c| c.customer_id == "bob"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Seed::parse("[[stock]]\nsku = \"A\"\non_hand = 1\ncolor = \"red\"\n").is_err());
    }
}
