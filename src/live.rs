//! The live config: parsed once per (re)load, swapped atomically, shared by reference.

use crate::config::{self, Config, ConfigError, Defaults, Timeouts};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// One loaded config plus its HTTP clients; requests hold an `Arc` of it for their whole life,
/// so a reload never changes the config under a request in flight.
pub struct Live {
    /// The parsed config.
    pub config: Config,
    /// Unix seconds of the load.
    pub loaded_at: u64,
    agents: Vec<(Timeouts, ureq::Agent)>,
}

impl Live {
    /// The HTTP client for an endpoint's timeouts.
    pub fn agent(&self, timeouts: &Timeouts) -> Option<&ureq::Agent> {
        self.agents
            .iter()
            .find(|(t, _)| t == timeouts)
            .map(|(_, a)| a)
    }
}

/// The config path and the current `Live`, swapped under a lock on reload.
pub struct Shared {
    /// Path of the config file, fixed for the life of the process.
    pub path: String,
    defaults: Defaults,
    max_idle_per_host: usize,
    current: RwLock<Arc<Live>>,
    reload_lock: Mutex<()>,
    // Agents outlive reloads so connection pools stay warm; serializes reloads too.
    agent_cache: Mutex<Vec<(Timeouts, ureq::Agent)>>,
}

impl Shared {
    /// Loads the file for the first time.
    pub fn load(
        path: &str,
        defaults: Defaults,
        max_idle_per_host: usize,
    ) -> Result<Shared, ConfigError> {
        let config = config::load_file(path, &defaults)?;
        let agent_cache = Mutex::new(Vec::new());
        let live = build(config, &agent_cache, max_idle_per_host);
        Ok(Shared {
            path: path.to_string(),
            defaults,
            max_idle_per_host,
            current: RwLock::new(Arc::new(live)),
            reload_lock: Mutex::new(()),
            agent_cache,
        })
    }

    /// The config to serve one request with.
    pub fn snapshot(&self) -> Arc<Live> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the file; on error the old config stays.
    pub fn reload(&self) -> Result<Arc<Live>, ConfigError> {
        let _serial = self.reload_lock.lock();
        let config = config::load_file(&self.path, &self.defaults)?;
        for w in &config.warnings {
            log::warn!("{}", w);
        }
        let live = Arc::new(build(config, &self.agent_cache, self.max_idle_per_host));
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::clone(&live);
        Ok(live)
    }
}

fn build(config: Config, cache: &Mutex<Vec<(Timeouts, ureq::Agent)>>, max_idle: usize) -> Live {
    let mut cache = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut agents: Vec<(Timeouts, ureq::Agent)> = Vec::new();
    for ep in &config.endpoints {
        if agents.iter().any(|(t, _)| *t == ep.timeouts) {
            continue;
        }
        let agent = match cache.iter().find(|(t, _)| *t == ep.timeouts) {
            Some((_, a)) => a.clone(),
            None => {
                let a = crate::upstream::agent(&ep.timeouts, max_idle);
                cache.push((ep.timeouts, a.clone()));
                a
            }
        };
        agents.push((ep.timeouts, agent));
    }
    Live {
        config,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        agents,
    }
}
