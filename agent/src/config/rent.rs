//! The config of what renting may cost and where from: `[budget]`, `[leaks]` and
//! `[provider.offers]` (the constraints an offer must meet).
//!
//! ```toml
//! [budget]                      # optional: without it nothing limits the spend
//! per_day = 50.0                # USD; nodes count against the day they were rented (burst.window.tz)
//! per_month = 800.0             # optional
//! drain_time = "30m"            # reserved past the burst window's close for the drain
//!
//! [leaks]                       # instances with our owner tag that the state does not know
//! grace = "10m"                 # younger ones are left alone (a launch in flight)
//! terminate = false             # true: terminate them; false: report them (log, metric, nodes list)
//!
//! [provider.offers]             # constraints; offers are tried cheapest first
//! gpu_type = "a100"
//! min_gpus = 1
//! max_price_per_hour = 4.0
//! allow_spot = false
//! no_capacity_backoff = "10m"   # an offer without capacity is not tried again for this long
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::Dur;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub per_day: toml::Spanned<f64>,
    pub per_month: Option<toml::Spanned<f64>>,
    #[serde(default = "half_hour")]
    pub drain_time: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaksConfig {
    #[serde(default = "ten_minutes")]
    pub grace: Dur,
    #[serde(default)]
    pub terminate: bool,
}

impl Default for LeaksConfig {
    fn default() -> Self {
        LeaksConfig { grace: ten_minutes(), terminate: false }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffersConfig {
    pub gpu_type: Option<String>,
    pub min_gpus: Option<u32>,
    pub max_price_per_hour: Option<toml::Spanned<f64>>,
    #[serde(default)]
    pub allow_spot: bool,
    pub no_capacity_backoff: Option<Dur>,
}

fn half_hour() -> Dur {
    Dur(Duration::from_secs(1800))
}
fn ten_minutes() -> Dur {
    Dur(Duration::from_secs(600))
}

type Refusal = (std::ops::Range<usize>, &'static str, String);

fn positive(v: &toml::Spanned<f64>, key: &'static str) -> Result<(), Refusal> {
    let x = *v.get_ref();
    if x.is_finite() && x > 0.0 {
        return Ok(());
    }
    Err((v.span(), key, format!("must be a price in USD above 0 (got {x})")))
}

impl BudgetConfig {
    pub(super) fn check(&self) -> Result<(), Refusal> {
        positive(&self.per_day, "budget.per_day")?;
        if let Some(month) = &self.per_month {
            positive(month, "budget.per_month")?;
            if month.get_ref() < self.per_day.get_ref() {
                return Err((
                    month.span(),
                    "budget.per_month",
                    format!("is below budget.per_day ({}): one day could never be spent", self.per_day.get_ref()),
                ));
            }
        }
        Ok(())
    }
}

impl OffersConfig {
    pub(super) fn check(&self) -> Result<(), Refusal> {
        match &self.max_price_per_hour {
            Some(p) => positive(p, "provider.offers.max_price_per_hour"),
            None => Ok(()),
        }
    }
}
