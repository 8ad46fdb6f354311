//! What admission judges against: the cluster's objects and the last render's size budget
//! and policies in force, built in one place from (inputs, plan) and shared as plain data
//! by the webhook, the reconciler's render loop, `serve --state-dir` and `check`.

use std::sync::Arc;

use crate::cluster::{ClusterFacts, ImageConfigError};
use crate::render::{self, Inputs, Plan, RenderOptions};
use crate::validate::SizeCheck;

/// What admission knows of the cluster, rebuilt whenever the cluster changes so that
/// no request waits on the API server.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub facts: Result<ClusterFacts, ImageConfigError>,
    /// Payload repositories alone, for when the Image CR's lists are unusable.
    pub payload_facts: ClusterFacts,
    /// The objects judged against (the Image guard reads the policies). Between renders
    /// they are the store's newest, without pools and MachineConfigs.
    pub inputs: Arc<Inputs>,
    /// Policies whose scopes are written: an update of one frees what it takes of the
    /// size budget.
    pub in_force: std::collections::BTreeSet<String>,
    pub size: SizeCheck,
    pub options: RenderOptions,
    /// The MCO renders policies on this cluster (FeatureGate): what its sync would fail on
    /// is denied, not just warned about.
    pub mco_renders: bool,
}

impl Snapshot {
    /// Renders `inputs` for the size budget; where a plan exists already, [`Snapshot::from_plan`].
    pub fn build(inputs: &Inputs, options: &RenderOptions) -> Snapshot {
        let plan = render::plan(inputs, options).ok();
        Snapshot::from_plan(Arc::new(inputs.clone()), plan.as_ref(), options)
    }

    /// This snapshot with newer objects: the facts (Image, ClusterVersion, mirror sets,
    /// FeatureGate) and the policies judged against are the new ones; the size budget and
    /// the policies in force stay those of the last render until the next.
    pub fn with_inputs(&self, inputs: Arc<Inputs>) -> Snapshot {
        Snapshot::judging(
            inputs,
            self.in_force.clone(),
            self.size.clone(),
            self.options.clone(),
        )
    }

    /// From a finished plan (`None`: the inputs cannot be rendered, no size to check).
    pub fn from_plan(
        inputs: Arc<Inputs>,
        plan: Option<&Plan>,
        options: &RenderOptions,
    ) -> Snapshot {
        let size = match plan {
            Some(plan) => plan.size_check(options.size_budget),
            None => SizeCheck {
                machine_config: render::registries_mc_name("worker"),
                current_bytes: 0,
                budget_bytes: options.size_budget,
                namespaces: Default::default(),
                new_namespace_bytes: 0,
                held_back: None,
            },
        };
        let in_force = plan
            .map(|p| {
                let key = |o: &render::PolicyOutcome| match &o.namespace {
                    Some(ns) => format!("{ns}/{}", o.name),
                    None => o.name.clone(),
                };
                p.policies
                    .iter()
                    .chain(&p.image_policies)
                    .filter(|o| o.condition.takes_effect())
                    .map(key)
                    .collect()
            })
            .unwrap_or_default();
        Snapshot::judging(inputs, in_force, size, options.clone())
    }

    /// What the objects alone decide: the Image's and ClusterVersion's facts, the gate.
    fn judging(
        inputs: Arc<Inputs>,
        in_force: std::collections::BTreeSet<String>,
        size: SizeCheck,
        options: RenderOptions,
    ) -> Snapshot {
        let cv = inputs.cluster_version.as_ref();
        let payload_facts = ClusterFacts::new(None, cv, &options.extra_payload_repos)
            .expect("no Image, no list to reject");
        Snapshot {
            facts: inputs.facts(&options),
            payload_facts,
            mco_renders: crate::mco::sigstore_gate(inputs.feature_gate.as_ref(), cv).mco_renders(),
            inputs,
            in_force,
            size,
            options,
        }
    }
}
