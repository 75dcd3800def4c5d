//! Admission to capped backends: per-model gates with a fair, prioritised queue
//! (`backend_gate`).

pub mod backend_gate;

use backend_gate::ModelGate;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A model's gate and the caps it was built with.
struct GateEntry {
    caps: Vec<Option<usize>>,
    wait: Duration,
    gate: Arc<ModelGate>,
}

/// The gates of the models whose backends have caps, by model id; kept across reloads.
#[derive(Default)]
pub struct Gates(Mutex<HashMap<String, GateEntry>>);

impl Gates {
    /// The gate of a model whose backends have concurrency caps (`None` when none has one).
    pub fn gate(
        &self,
        model: &str,
        caps: Vec<Option<usize>>,
        wait: Duration,
    ) -> Option<Arc<ModelGate>> {
        if caps.iter().all(Option::is_none) {
            return None;
        }
        let mut gates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = gates.entry(model.to_string()).or_insert_with(|| GateEntry {
            caps: caps.clone(),
            wait,
            gate: Arc::new(ModelGate::new(caps.clone(), wait)),
        });
        // A reload that changed the caps gets a new gate; requests waiting on the old one
        // finish there.
        if entry.caps != caps || entry.wait != wait {
            *entry = GateEntry {
                caps: caps.clone(),
                wait,
                gate: Arc::new(ModelGate::new(caps, wait)),
            };
        }
        Some(Arc::clone(&entry.gate))
    }

    /// Lines for /metrics: requests waiting per model.
    pub fn metrics_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP modelmux_backend_queue_depth Requests waiting for a backend below its maxConcurrent, by model.\n# TYPE modelmux_backend_queue_depth gauge"
        );
        let gates = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut models: Vec<&String> = gates.keys().collect();
        models.sort();
        for m in models {
            let _ = writeln!(
                out,
                "modelmux_backend_queue_depth{{model=\"{}\"}} {}",
                crate::metrics::esc(m),
                gates[m].gate.depth()
            );
        }
    }
}
