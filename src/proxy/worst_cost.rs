//! What a request may cost at most, reserved against cost budgets at admission: its prompt
//! estimate at the input price plus its completion allowance at the output price, at the prices
//! of the dearest backend that may serve it (the model's and its fallbacks').

use crate::backend::catalog::Resolved;
use crate::config::Config;

/// The worst case in micro-units; `None` when one of those backends has no price (a cost
/// budget then cannot count the request, and refuses it rather than let it spend unlimited).
/// Only cost budgets need it: without a rule that sets one, no price is looked up (`None`).
pub fn worst_cost(
    config: &Config,
    resolved: &Resolved,
    prompt_bytes: usize,
    max_tokens: u64,
) -> Option<u64> {
    if !config.policy.limits.iter().any(|r| r.has_cost()) {
        return None;
    }
    let prompt = (prompt_bytes as u64).div_ceil(4);
    let mut worst = 0;
    for index in super::choose::model_order(config, resolved.index) {
        for b in &config.endpoints[index].backends {
            let model = match &resolved.backend_model {
                Some(m) if index == resolved.index => m.as_str(),
                _ => b.actual_model_name.as_str(),
            };
            let price = config.prices.lookup(b.pricing.as_ref(), model)?;
            worst = worst.max(crate::policy::worst_case(price, prompt, max_tokens));
        }
    }
    Some(worst)
}
