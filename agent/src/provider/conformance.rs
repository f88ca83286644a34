//! The provider contract, checked the same way for every implementation.

use std::collections::BTreeMap;

use super::*;

/// A provider that is `inner` but for `launch`, which goes through `on_launch` with `inner` at
/// hand: a test's check or fault around a real provider.
pub struct OnLaunch<P, F> {
    pub inner: P,
    pub on_launch: F,
}

impl<P, F> Provider for OnLaunch<P, F>
where
    P: Provider,
    F: Fn(&P, &LaunchRequest) -> Result<Instance, ProviderError> + Send + Sync,
{
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn offers(&self) -> Result<Vec<Offer>, ProviderError> {
        self.inner.offers()
    }
    fn launch(&self, req: &LaunchRequest) -> Result<Instance, ProviderError> {
        (self.on_launch)(&self.inner, req)
    }
    fn describe(&self, tags: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        self.inner.describe(tags)
    }
    fn terminate(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.terminate(id)
    }
    fn interruptions(&self) -> Result<Vec<Interruption>, ProviderError> {
        self.inner.interruptions()
    }
}

/// A launch request for tests, tagged with a unique owner so runs never see each other.
pub fn request(owner: &str, intent: &str) -> LaunchRequest {
    let tags: BTreeMap<String, String> = [
        (TAG_OWNER, owner),
        (TAG_INTENT, intent),
        (TAG_VOLUME, "main"),
        (TAG_EXPIRES, "2099-01-01T00:00:00Z"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    LaunchRequest {
        idempotency_key: format!("{owner}-{intent}"),
        instance_type: String::new(),
        tags,
        bootstrap: Bootstrap {
            node: intent.into(),
            store: "file:///nonexistent".into(),
            volume: "main".into(),
            branch: format!("burst-{intent}"),
            source_branch: "main".into(),
            controller: "unix:/nonexistent".into(),
            token: "t".into(),
            lease_secs: 3600,
            env: BTreeMap::new(),
            clock: None,
            metadata_endpoint: None,
        },
    }
}

/// Launch twice with one key (one instance), describe by tag, terminate twice (idempotent),
/// and a describe that confirms it.
pub fn check(p: &dyn Provider) {
    let offers = p.offers().expect("offers");
    assert!(!offers.is_empty(), "a provider offers something");
    let owner = format!("conformance-{}", std::process::id());
    let mut req = request(&owner, "n1");
    req.instance_type = offers[0].instance_type.clone();
    let a = p.launch(&req).expect("launch");
    let b = p.launch(&req).expect("launch again with the same key");
    assert_eq!(a.id, b.id, "one key, one instance");
    let owner_tag: BTreeMap<String, String> = [(TAG_OWNER.to_string(), owner.clone())].into();
    let listed = p.describe(&owner_tag).expect("describe");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].tags.get(TAG_INTENT).map(String::as_str), Some("n1"));
    assert!(listed[0].launched_at.is_some());
    p.terminate(&a.id).expect("terminate");
    p.terminate(&a.id).expect("terminate is idempotent");
    // Terminate only asks; a later describe confirms (bounded wait for real providers).
    for _ in 0..200 {
        let after = p.describe(&owner_tag).expect("describe after terminate");
        if after.iter().all(|i| i.state == InstanceState::Terminated) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("terminated instance still described as live after 10 s: {:?}", p.describe(&owner_tag));
}
