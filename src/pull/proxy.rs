//! Proxies from the environment, as containers/image's default transport takes them (Go's
//! `http.ProxyFromEnvironment`, `golang.org/x/net/http/httpproxy`): `HTTPS_PROXY` for
//! https registries, `HTTP_PROXY` for plain ones, `NO_PROXY` exceptions, and never for
//! `localhost` or a loopback address. A registry behind a proxy is reached through a
//! CONNECT tunnel (also for plain HTTP, where Go would send the request itself to the
//! proxy); the proxy is spoken to in plain HTTP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Stream = TokioIo<tokio::net::TcpStream>;

/// Connects directly or through the proxy the environment gives for the destination.
#[derive(Clone)]
pub struct Connector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Connector {
    pub fn from_env() -> Connector {
        Connector::with(Matcher::from_env())
    }

    pub fn with(proxies: Matcher) -> Connector {
        let mut direct = HttpConnector::new();
        direct.enforce_http(false);
        Connector {
            direct,
            proxies: Arc::new(proxies),
        }
    }

    /// The proxy for `dst`, if any, with its Basic credentials.
    fn proxy_for(&self, dst: &Uri) -> Option<(Uri, Option<hyper::header::HeaderValue>)> {
        let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
        let loopback = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if loopback || host.eq_ignore_ascii_case("localhost") {
            return None;
        }
        let i = self.proxies.intercept(dst)?;
        Some((i.uri().clone(), i.basic_auth().cloned()))
    }
}

/// `dst` with its scheme's port made explicit (a tunnel is opened to host:port).
fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let Some(host) = dst.host().map(str::to_string) else {
        return dst;
    };
    let mut parts = dst.clone().into_parts();
    match format!("{host}:{port}").parse() {
        Ok(authority) => parts.authority = Some(authority),
        Err(_) => return dst,
    }
    Uri::from_parts(parts).unwrap_or(dst)
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self.proxy_for(&dst) {
            Some((proxy, auth)) => {
                let mut tunnel = Tunnel::new(proxy, self.direct.clone());
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth);
                }
                Box::pin(async move { tunnel.call(with_port(dst)).await.map_err(Into::into) })
            }
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { direct.call(dst).await.map_err(Into::into) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_no_proxy_go_direct() {
        let c = Connector::with(
            Matcher::builder()
                .https("http://proxy.example:3128")
                .http("http://proxy.example:3128")
                .no("internal.example")
                .build(),
        );
        let via = |u: &str| c.proxy_for(&u.parse().unwrap()).map(|(p, _)| p.to_string());
        assert_eq!(
            via("https://quay.io/v2/").as_deref(),
            Some("http://proxy.example:3128/")
        );
        assert_eq!(via("https://localhost:5000/v2/"), None);
        assert_eq!(via("https://127.0.0.1:5000/v2/"), None);
        assert_eq!(via("https://[::1]:5000/v2/"), None);
        assert_eq!(via("https://r.internal.example/v2/"), None);
        assert_eq!(
            with_port("http://r.example/v2/".parse().unwrap()).to_string(),
            "http://r.example:80/v2/"
        );
        assert_eq!(
            with_port("https://r.example/v2/".parse().unwrap()).to_string(),
            "https://r.example:443/v2/"
        );
    }
}
