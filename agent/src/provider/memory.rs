//! An in-memory provider for unit tests: instances are records, nothing runs.
//!
//! Faults for tests: [`MemoryProvider::lose_next_launch_response`] makes the next launch start
//! its instance and then fail as if the answer was lost on the way; [`MemoryProvider::interrupt`]
//! posts a spot interruption notice; [`MemoryProvider::hold_launches`] makes launches block
//! (a slow cloud API) until [`MemoryProvider::let_launches_go`].

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use jiff::Timestamp;

use super::*;
use crate::clock::Clock;

#[derive(Default)]
struct Inner {
    instances: Vec<Instance>,
    by_key: BTreeMap<String, String>,
    bootstraps: BTreeMap<String, Bootstrap>,
    launches: u32,
    lose_next_response: bool,
    slow_terminate: bool,
    interruptions: Vec<Interruption>,
    /// Offers in place of the default one.
    offers: Option<Vec<Offer>>,
    /// Instance types that have no capacity (launch fails with `NoCapacity`).
    no_capacity: Vec<String>,
}

#[derive(Clone)]
pub struct MemoryProvider {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
    /// Launches wait while it holds `true` (and count how many are waiting).
    gate: Arc<(Mutex<(bool, u32)>, Condvar)>,
}

impl MemoryProvider {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryProvider { inner: Arc::default(), clock, gate: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instances started so far (each launch that started something counts once).
    pub fn launches(&self) -> u32 {
        self.lock().launches
    }

    /// Launches block from now on (a cloud API that hangs) until [`Self::let_launches_go`].
    pub fn hold_launches(&self) {
        self.gate.0.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
    }

    pub fn let_launches_go(&self) {
        self.gate.0.lock().unwrap_or_else(|p| p.into_inner()).0 = false;
        self.gate.1.notify_all();
    }

    /// Launches blocked at the gate now.
    pub fn launches_held(&self) -> u32 {
        self.gate.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    pub fn lose_next_launch_response(&self) {
        self.lock().lose_next_response = true;
    }

    /// Terminations stop at `Stopping` until [`MemoryProvider::finish_terminations`].
    pub fn slow_terminate(&self) {
        self.lock().slow_terminate = true;
    }

    pub fn finish_terminations(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.slow_terminate = false;
        for i in inner.instances.iter_mut().filter(|i| i.state == InstanceState::Stopping) {
            i.state = InstanceState::Terminated;
            i.terminated_at = Some(now);
        }
    }

    /// Offers in place of the default one (`mem-gpu`, 2.50/h).
    pub fn set_offers(&self, offers: Vec<Offer>) {
        self.lock().offers = Some(offers);
    }

    /// Launches of these instance types fail with `NoCapacity` (nothing starts).
    pub fn set_no_capacity(&self, types: &[&str]) {
        self.lock().no_capacity = types.iter().map(|t| t.to_string()).collect();
    }

    pub fn interrupt(&self, instance_id: &str) {
        let at = self.clock.now();
        self.lock().interruptions.push(Interruption { instance_id: instance_id.into(), at });
    }

    pub fn bootstrap_of(&self, instance_id: &str) -> Option<Bootstrap> {
        self.lock().bootstraps.get(instance_id).cloned()
    }

    pub fn running(&self) -> Vec<Instance> {
        self.lock().instances.iter().filter(|i| i.state != InstanceState::Terminated).cloned().collect()
    }
}

impl Provider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    fn offers(&self) -> Result<Vec<Offer>, ProviderError> {
        let default = || vec![Offer { instance_type: "mem-gpu".into(), gpus: 1, price_per_hour: Some(2.5), spot: false, gpu_type: None }];
        Ok(self.lock().offers.clone().unwrap_or_else(default))
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        {
            let mut g = self.gate.0.lock().unwrap_or_else(|p| p.into_inner());
            g.1 += 1;
            while g.0 {
                g = self.gate.1.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.1 -= 1;
        }
        let now: Timestamp = self.clock.now();
        let mut inner = self.lock();
        if let Some(id) = inner.by_key.get(&req.idempotency_key).cloned() {
            return inner.instances.iter().find(|i| i.id == id).cloned().ok_or_else(|| {
                ProviderError::Permanent(format!("instance {id} of key {} vanished", req.idempotency_key))
            });
        }
        if inner.no_capacity.contains(&req.instance_type) {
            return Err(ProviderError::NoCapacity(format!("launch {}: no capacity", req.instance_type)));
        }
        inner.launches += 1;
        let id = format!("mem-{}", inner.launches);
        let instance = Instance {
            id: id.clone(),
            instance_type: req.instance_type.clone(),
            state: InstanceState::Running,
            tags: req.tags.clone(),
            launched_at: Some(now),
            terminated_at: None,
        };
        inner.instances.push(instance.clone());
        inner.by_key.insert(req.idempotency_key.clone(), id.clone());
        inner.bootstraps.insert(id, req.bootstrap.clone());
        if std::mem::take(&mut inner.lose_next_response) {
            return Err(ProviderError::Transient("launch: connection reset before the answer".into()));
        }
        Ok(instance)
    }

    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        Ok(self.lock().instances.iter().filter(|i| has_tags(&i.tags, tags)).cloned().collect())
    }

    fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let slow = inner.slow_terminate;
        match inner.instances.iter_mut().find(|i| i.id == instance_id) {
            Some(i) if slow && i.state != InstanceState::Terminated => {
                i.state = InstanceState::Stopping;
                Ok(())
            }
            Some(i) if i.state != InstanceState::Terminated => {
                i.state = InstanceState::Terminated;
                i.terminated_at = Some(now);
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(ProviderError::Permanent(format!("terminate {instance_id}: no such instance"))),
        }
    }

    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError> {
        Ok(self.lock().interruptions.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn the_memory_provider_keeps_the_provider_contract() {
        let clock = Arc::new(ManualClock::new("2026-03-02T06:00:00Z".parse().unwrap()));
        let p = MemoryProvider::new(clock);
        super::super::conformance::check(&p);
    }
}
