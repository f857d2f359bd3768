//! `sagactl orders`: the read side's answers (the query service's HTTP API), for people.

use anyhow::Context as _;
use serde_json::Value;

/// A client of the query API at `base` (`http://host:port`).
pub struct Orders {
    base: String,
    http: reqwest::Client,
}

impl Orders {
    /// A client of the API at `base`.
    pub fn new(base: &str) -> anyhow::Result<Orders> {
        anyhow::ensure!(base.starts_with("http://") || base.starts_with("https://"), "--url: expected http://HOST:PORT, found {base:?}");
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(40)).build()?;
        Ok(Orders { base: base.trim_end_matches('/').to_string(), http })
    }

    /// `GET path` with `query`; the JSON body of a success, or the API's error as an error.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = self.http.get(&url).query(query).send().await.with_context(|| format!("the query API at {} did not answer", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() {
            anyhow::bail!("{} ({status})", body["error"].as_str().unwrap_or("no error message"));
        }
        Ok(body)
    }
}

/// One order as lines of text.
pub fn render_order(o: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = format!(
        "order {}  {}{}\n  customer {}  total {} {}  saga {}\n  stock {}{}  payment {}{}\n  created {}  updated {}\n",
        text(&o["order_id"]),
        text(&o["status"]),
        o["rejection_reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
        text(&o["customer_id"]),
        minor(o["total_minor"].as_i64().unwrap_or(0)),
        text(&o["currency"]),
        o["saga_id"].as_str().unwrap_or("-"),
        text(&o["stock"]["state"]),
        o["stock"]["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
        text(&o["payment"]["state"]),
        o["payment"]["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default(),
        text(&o["created_at"]),
        text(&o["updated_at"]),
    );
    for l in o["lines"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} x {} at {} {}\n",
            l["quantity"],
            text(&l["sku"]),
            minor(l["unit_price_minor"].as_i64().unwrap_or(0)),
            text(&l["currency"])
        ));
    }
    if let Some(link) = o["links"]["saga"].as_str() {
        out.push_str(&format!("  saga view: {link}\n"));
    }
    out
}

/// A page of orders as a table.
pub fn render_page(page: &Value) -> String {
    let mut out = format!("{:<28} {:<16} {:<9} {:>12} {:<9} {:<10} {}\n", "ORDER", "CUSTOMER", "STATUS", "TOTAL", "STOCK", "PAYMENT", "CREATED");
    for o in page["orders"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<28} {:<16} {:<9} {:>12} {:<9} {:<10} {}\n",
            o["order_id"].as_str().unwrap_or(""),
            o["customer_id"].as_str().unwrap_or(""),
            o["status"].as_str().unwrap_or(""),
            format!("{} {}", minor(o["total_minor"].as_i64().unwrap_or(0)), o["currency"].as_str().unwrap_or("")),
            o["stock"]["state"].as_str().unwrap_or(""),
            o["payment"]["state"].as_str().unwrap_or(""),
            o["created_at"].as_str().unwrap_or(""),
        ));
    }
    if let Some(c) = page["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {c}\n"));
    }
    out
}

/// An order's history as a table.
pub fn render_history(h: &Value) -> String {
    let mut out = format!("{:<24} {:<24} {:<40} {}\n", "TIME", "EVENT", "READ AT", "REASON");
    for e in h["events"].as_array().into_iter().flatten() {
        let p = &e["position"];
        out.push_str(&format!(
            "{:<24} {:<24} {:<40} {}\n",
            e["occurred_at"].as_str().unwrap_or(""),
            e["event"].as_str().unwrap_or(""),
            format!("{}:{}:{}", p["topic"].as_str().unwrap_or(""), p["partition"], p["offset"]),
            e["reason"].as_str().unwrap_or(""),
        ));
    }
    out
}

/// Minor units as a decimal amount with two places.
fn minor(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", m.unsigned_abs() / 100, m.unsigned_abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_order_and_a_page() {
        let o = serde_json::json!({"order_id": "o1", "status": "REJECTED", "rejection_reason": "payment declined", "customer_id": "alice",
            "total_minor": 12345, "currency": "EUR", "saga_id": "o1", "stock": {"state": "released"}, "payment": {"state": "declined", "reason": "no credit"},
            "created_at": "t0", "updated_at": "t1", "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": 5, "currency": "EUR"}], "links": {}});
        let text = render_order(&o);
        assert!(text.contains("REJECTED (payment declined)") && text.contains("123.45 EUR") && text.contains("payment declined (no credit)"), "{text}");
        assert!(text.contains("2 x A at 0.05 EUR"), "{text}");
        let page = render_page(&serde_json::json!({"orders": [o], "next_cursor": "ab"}));
        assert!(page.contains("o1") && page.contains("--cursor ab"), "{page}");
        assert_eq!(minor(-5), "-0.05");
    }
}
