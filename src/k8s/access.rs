//! Who may scrape `/metrics`, asked of the API server as kube-rbac-proxy asks it: a
//! TokenReview authenticates the bearer token, a SubjectAccessReview asks whether that
//! user may `get` the non-resource URL `/metrics`. Answers are cached by the token's
//! SHA-256 (allowed for a minute, refused for ten seconds) so that a scrape every 30 s
//! costs the API server at most two reviews a minute per scraper.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

const ALLOWED_FOR: Duration = Duration::from_secs(60);
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Distinct tokens remembered; past it the expired go first, then all.
const MAX_CACHED: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Unauthenticated,
    Forbidden(String),
    /// The API server could not be asked; not cached.
    Unavailable(String),
}

pub struct TokenAccess {
    client: kube::Client,
    path: String,
    cache: Mutex<HashMap<[u8; 32], (Decision, Instant)>>,
}

impl TokenAccess {
    pub fn new(client: kube::Client) -> TokenAccess {
        TokenAccess::for_path(client, "/metrics")
    }

    /// Access to another non-resource URL of the metrics port.
    pub fn for_path(client: kube::Client, path: &str) -> TokenAccess {
        TokenAccess {
            client,
            path: path.into(),
            cache: Mutex::default(),
        }
    }

    pub async fn check(&self, token: &str) -> Decision {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or_default();
        let now = Instant::now();
        if let Some((decision, until)) = self.lock().get(&key) {
            if *until > now {
                return decision.clone();
            }
        }
        let decision = self.ask(token).await;
        let ttl = match decision {
            Decision::Allowed => Some(ALLOWED_FOR),
            Decision::Unauthenticated | Decision::Forbidden(_) => Some(REFUSED_FOR),
            Decision::Unavailable(_) => None,
        };
        if let Some(ttl) = ttl {
            let mut cache = self.lock();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(key, (decision.clone(), now + ttl));
        }
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Decision, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ask(&self, token: &str) -> Decision {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = match Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) => r,
            Err(e) => return Decision::Unavailable(format!("TokenReview: {e}")),
        };
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Decision::Unauthenticated;
        };
        let name = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(self.path.clone()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
        {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Decision::Allowed,
            Ok(_) => Decision::Forbidden(format!("{name} may not get {}", self.path)),
            Err(e) => Decision::Unavailable(format!("SubjectAccessReview: {e}")),
        }
    }
}
