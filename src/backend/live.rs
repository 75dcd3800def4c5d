//! The live config: parsed once per (re)load, swapped atomically, shared by reference.

use crate::backend::balance::{Balancer, Pick};
use crate::backend::catalog::{self, Catalog, Listed, Resolved};
use crate::backend::prepared::Prepared;
use crate::config::{self, ClientKey, Config, ConfigError, Defaults};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// One loaded config plus what is built from it (HTTP clients, each backend's parsed URLs and
/// key header); requests hold an `Arc` of it for their whole life, so a reload never changes
/// the config, or a backend's URL and key, under a request in flight.
pub struct Live {
    /// The parsed config.
    pub config: Config,
    /// Unix seconds of the load.
    pub loaded_at: u64,
    /// Backend selection and passive health for this config.
    pub balancer: Balancer,
    /// What discovery found (process-wide: the same for every config).
    pub catalog: Arc<Catalog>,
    /// Each backend's request parts, by endpoint then backend index (a `Pick`).
    prepared: Vec<Vec<Prepared>>,
}

impl Live {
    /// The endpoint that serves a requested model id, by the last discovered lists.
    pub fn resolve(&self, id: &str) -> Option<Resolved> {
        self.catalog
            .read(|targets| catalog::resolve(&self.config, targets, id))
    }

    /// The models to show: configured and discovered.
    pub fn models(&self) -> Vec<Listed> {
        self.catalog
            .read(|targets| catalog::list(&self.config, targets))
    }

    /// What every request to a picked backend shares: its client, URLs and key header.
    pub fn prepared(&self, pick: Pick) -> Option<&Prepared> {
        self.prepared.get(pick.0)?.get(pick.1)
    }
}

/// The config path and the current `Live`, swapped under a lock on reload.
pub struct ConfigStore {
    /// Path of the config file, fixed for the life of the process.
    pub path: String,
    /// Discovered model lists, kept across reloads.
    pub catalog: Arc<Catalog>,
    defaults: Defaults,
    current: RwLock<Arc<Live>>,
    reload_lock: Mutex<()>,
    agents: AgentCache,
    /// Runs after each successful reload (discovery starts its thread when first needed).
    reloaded: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Whether discovery's scheduler thread was started.
    scheduler: AtomicBool,
}

/// The HTTP clients by client key. Agents outlive reloads so connection pools stay warm.
struct AgentCache {
    cache: Mutex<Vec<(ClientKey, ureq::Agent)>>,
    max_idle_per_host: usize,
}

impl ConfigStore {
    /// Loads the file for the first time.
    pub fn load(
        path: &str,
        defaults: Defaults,
        max_idle_per_host: usize,
    ) -> Result<ConfigStore, ConfigError> {
        let config = config::load_file(path, &defaults)?;
        let agents = AgentCache {
            cache: Mutex::new(Vec::new()),
            max_idle_per_host,
        };
        let catalog = Arc::new(Catalog::default());
        let live = build(path, config, &agents, None, &catalog)?;
        Ok(ConfigStore {
            path: path.to_string(),
            catalog,
            defaults,
            current: RwLock::new(Arc::new(live)),
            reload_lock: Mutex::new(()),
            agents,
            reloaded: OnceLock::new(),
            scheduler: AtomicBool::new(false),
        })
    }

    /// The config to serve one request with.
    pub fn snapshot(&self) -> Arc<Live> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the file and logs what it now serves; on error the old config stays.
    pub fn reload(&self) -> Result<Arc<Live>, ConfigError> {
        let _serial = self.reload_lock.lock();
        let config = config::load_file(&self.path, &self.defaults)?;
        for w in &config.warnings {
            log::warn!("{}", w);
        }
        let previous = self.snapshot();
        let live = Arc::new(build(
            &self.path,
            config,
            &self.agents,
            Some(&previous),
            &self.catalog,
        )?);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::clone(&live);
        drop(guard);
        let n = live.config.endpoints.len();
        log::info!(
            "config reloaded from {}: {} {}",
            self.path,
            n,
            if n == 1 { "model" } else { "models" }
        );
        // Discovery refreshes at once: new backends are listed, removed ones forgotten.
        self.catalog.refresh_all();
        if let Some(hook) = self.reloaded.get() {
            hook();
        }
        Ok(live)
    }

    /// Sets what runs after each successful reload (once; later calls are ignored).
    pub fn on_reload(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.reloaded.set(hook);
    }

    /// True for the one caller that gets to start discovery's scheduler thread.
    pub fn claim_scheduler(&self) -> bool {
        !self.scheduler.swap(true, Ordering::SeqCst)
    }
}

fn build(
    path: &str,
    config: Config,
    agents_cache: &AgentCache,
    previous: Option<&Live>,
    catalog: &Arc<Catalog>,
) -> Result<Live, ConfigError> {
    let max_idle = agents_cache.max_idle_per_host;
    let mut cache = match agents_cache.cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut prepared = Vec::with_capacity(config.endpoints.len());
    for ep in &config.endpoints {
        let mut parts = Vec::with_capacity(ep.backends.len());
        for backend in &ep.backends {
            let key = ep.client_key(backend);
            let agent = match cache.iter().find(|(k, _)| *k == key) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = crate::backend::upstream::agent(&key, max_idle).map_err(|message| {
                        ConfigError {
                            file: path.to_string(),
                            location: format!("endpoints.{}", ep.id),
                            message,
                        }
                    })?;
                    cache.push((key, a.clone()));
                    a
                }
            };
            parts.push(Prepared::new(backend, agent));
        }
        prepared.push(parts);
    }
    Ok(Live {
        balancer: Balancer::new(&config, previous.map(|p| &p.balancer)),
        catalog: Arc::clone(catalog),
        config,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        prepared,
    })
}
