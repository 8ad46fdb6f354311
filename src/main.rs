//! `cip-webhook`: the command line. Everything here is I/O around the library's pure core.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// The version and the commit it was built from (build.rs; `unknown` outside a checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CIP_WEBHOOK_COMMIT"),
    ")"
);

/// Admission webhook and MachineConfig renderer for OpenShift ClusterImagePolicy and
/// ImagePolicy.
///
/// Offline commands work on YAML/JSON manifests with no cluster: `render` shows the
/// MachineConfigs a set of manifests produces, `check` validates policies (and Image
/// updates) before they are applied (exit 1 on any denial), `explain` shows which policy
/// applies to an image. `verify` and `preview` say which images CRI-O would refuse under
/// the policies, reading manifests and signatures from the registries. `serve` and
/// `reconcile` run in the cluster.
#[derive(Parser, Debug)]
#[command(name = "cip-webhook", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render the generated MachineConfigs for every pool from manifests in a directory.
    ///
    /// Reads every .yaml/.yml/.json file under --input (multi-document files and Lists):
    /// ClusterImagePolicies and ImagePolicies, the Image `cluster`, the ClusterVersion
    /// `version`, mirror sets (IDMS, ITMS, ICSP), MachineConfigPools and MachineConfigs. Writes `<name>.yaml` per generated
    /// MachineConfig to --output and prints a summary. Policies the webhook would deny are
    /// reported and left out; exit 2 only when the input itself is unusable.
    Render {
        /// Directory of manifests to read (searched recursively).
        #[arg(long, value_name = "DIR")]
        input: PathBuf,
        /// Directory to write the MachineConfigs to (created if missing).
        #[arg(long, value_name = "DIR", required_unless_present_any = ["files", "diff"])]
        output: Option<PathBuf>,
        /// Also write the files each pool's nodes get, decoded: `DIR/<pool>/etc/containers/
        /// policy.json`, `.../registries.d/sigstore-registries.yaml`, `.../etc/crio/policies/
        /// <namespace>.json`.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
        /// Print what would change on each pool's nodes against the MachineConfigs in
        /// --input, as a unified diff of the decoded files.
        #[arg(long)]
        diff: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        report: Output,
    },
    /// Validate ClusterImagePolicy, ImagePolicy and Image files: exactly what the webhook
    /// would answer.
    ///
    /// Cluster context (Image `cluster`, ClusterVersion `version`, other policies and
    /// MachineConfigs for the size budget) comes from --state. An Image `cluster` in FILE
    /// is checked against the policies in --state, as the webhook guards Image updates.
    /// Exit 1 when anything would be denied, so it can gate a GitOps pipeline.
    Check {
        /// Directory of manifests describing the cluster (optional). An object of the same
        /// name there is the one a file's object replaces: the check is of an update.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Earlier versions of the objects under check (repeatable): each object is judged
        /// as an update of the one of its kind and name, as the webhook judges updates.
        #[arg(long = "old", value_name = "FILE")]
        old: Vec<PathBuf>,
        /// Policy (and Image cluster) files to check: `-` reads standard input (kustomize
        /// output), a directory is read recursively. An input that cannot be read gets its
        /// own entry; the others are still checked, and the exit is 2.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Check as the cluster-version operator: every denial is a warning.
        #[arg(long)]
        exempt: bool,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
        /// A file with nothing to check (no ClusterImagePolicy or Image, an unknown kind,
        /// an empty file) is not an error.
        #[arg(long)]
        allow_empty: bool,
        /// Judge each object alone. By default the objects are one apply, in the order
        /// given: each admitted one is in the cluster for those after it (its scopes, its
        /// share of the size budget), as a GitOps sync applies them.
        #[arg(long)]
        separately: bool,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        report: OutputOrFormat,
    },
    /// Serve the validating and mutating admission webhook over HTTPS.
    ///
    /// POST /validate and /mutate take admission.k8s.io/v1 AdmissionReviews; GET /healthz
    /// and /readyz (ready once the cluster state is loaded). /metrics, /healthz and /readyz
    /// are on --metrics-listen (plain HTTP). Without --state-dir it watches the cluster and,
    /// unless --mode admission-only, the replica holding the Lease writes the MachineConfigs
    /// and policy status. SIGTERM fails /readyz at once, keeps serving for --shutdown-delay,
    /// then stops accepting, lets requests in flight finish and releases the Lease.
    Serve {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        #[command(flatten)]
        common: Common,
    },
    /// Write the MachineConfigs and policy status, without serving admission.
    ///
    /// The reconciler's Deployment: the only one whose service account may write
    /// MachineConfigs. One replica at a time holds the Lease and writes; the others wait.
    /// Serves /metrics, /healthz and /readyz on --metrics-listen only. SIGTERM releases
    /// the Lease.
    Reconcile {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Write a CA and a serving certificate for the webhook, and print the caBundle.
    ///
    /// For development and tests; clusters use OpenShift's service-ca or cert-manager.
    Certs {
        /// Directory for ca.crt, tls.crt and tls.key (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// DNS names of the serving certificate, e.g. cip-webhook.cip-webhook.svc (repeatable).
        #[arg(long = "dns", value_name = "NAME", required = true)]
        dns: Vec<String>,
        /// Days the serving certificate is valid (1 to 36500).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
        #[command(flatten)]
        report: Output,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `cip-webhook man > cip-webhook.1`.
    Man,
    /// Show which scope and requirements apply to an image after rendering.
    ///
    /// Uses the same lookup as containers/image: the exact reference, then each parent
    /// namespace, then wildcard domains, then the default.
    Explain {
        /// Directory of manifests to render (as for `render --input`).
        #[arg(long, value_name = "DIR", required_unless_present = "kubeconfig")]
        input: Option<PathBuf>,
        /// Read the cluster instead of --input: its objects as the reconciler watches them,
        /// and the pods that run the image (shown; `verify` judges the digest they run).
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        kubeconfig: Option<PathBuf>,
        /// The pool whose policy.json to consult.
        #[arg(long, default_value = "worker")]
        pool: String,
        /// The pod's namespace: its `/etc/crio/policies/<namespace>.json` is consulted
        /// where its ImagePolicies made one (CRI-O falls back to policy.json otherwise).
        #[arg(long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        /// Image reference, e.g. `example.com/global/app:1` or `busybox`.
        image: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        report: OutputOrFormat,
    },
    /// Decide whether CRI-O on a pool would pull an image, signatures checked
    ///
    /// As containers/image decides: the policy.json entry, the pull source (mirrors first),
    /// the instance for the architecture, the sigstore attachment and each signature layer.
    /// Exit 0 pulled (accepted or no signature required), 1 refused, 2 unusable input, 3
    /// unknown (a registry error, a missing credential, or a case this tool does not decide:
    /// never reported as refused).
    Verify {
        /// Directory of manifests to render (as for `render --input`).
        #[arg(long, value_name = "DIR", required_unless_present = "kubeconfig")]
        input: Option<PathBuf>,
        /// Read the cluster instead of --input: its objects as the reconciler watches them,
        /// and the pods that run the image (shown; `verify` judges the digest they run).
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        kubeconfig: Option<PathBuf>,
        #[arg(long, default_value = "worker")]
        pool: String,
        /// The pod's namespace: its `/etc/crio/policies/<namespace>.json` where one exists.
        #[arg(long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        /// The node's architecture, for multi-arch images.
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// containers-auth.json with registry credentials.
        #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
        authfile: Option<PathBuf>,
        /// The nodes' OpenShift release (e.g. 4.18), to say when the entry needs a newer
        /// containers/image than it ships; default: the ClusterVersion in --input.
        #[arg(long, value_name = "VERSION")]
        openshift_version: Option<String>,
        /// The image as a pod names it, e.g. `quay.io/org/app:v1` or `busybox`.
        image: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        report: OutputOrFormat,
    },
    /// Judge every running image as `verify` does, before and after proposed changes
    ///
    /// Under the policies in `--input` and, with `--proposed`, after those files are
    /// applied: per policy, the images covered, accepted, refused at next pull, unknown and
    /// newly refused. Exit 1 when an image would be refused (with `--proposed`: newly
    /// refused), else 3 when some are unknown, else 0.
    Preview {
        /// Directory of manifests to render (as for `render --input`).
        #[arg(long, value_name = "DIR")]
        input: PathBuf,
        /// `[namespace] image [imageID]` lines.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "pods",
            required_unless_present = "pods"
        )]
        images: Option<PathBuf>,
        /// `kubectl get pods -A -o json` output: each container status's image and imageID.
        #[arg(long, value_name = "FILE")]
        pods: Option<PathBuf>,
        /// Manifests to apply on top of `--input` (same kind and name replaces).
        #[arg(long, value_name = "FILE")]
        proposed: Vec<PathBuf>,
        #[arg(long, default_value = "worker")]
        pool: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// containers-auth.json with registry credentials.
        #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
        authfile: Option<PathBuf>,
        /// Manifests and signatures fetched, read first if the file exists and written
        /// back: a later run needs no registry for what it holds.
        #[arg(long, value_name = "FILE")]
        attachments: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        report: OutputOrFormat,
    },
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address of the admission port (HTTPS). `[::]` takes IPv4 and IPv6; where IPv6 is
    /// off it falls back to `0.0.0.0`.
    #[arg(long, default_value = "[::]:8443")]
    listen: std::net::SocketAddr,
    /// Serving certificate (PEM, leaf first); reloaded when the file changes.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Read the cluster state (Image, ClusterVersion, policies, pools, MachineConfigs)
    /// from manifests in this directory, re-read when they change, instead of the cluster.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    state_dir: Option<PathBuf>,
    /// Users never denied anything, only warned: the platform's own writers (repeatable;
    /// giving any replaces the default). Keep the webhook configurations' matchConditions
    /// in step.
    #[arg(long = "exempt-user", value_name = "USER", default_values_t = [cip_webhook::webhook::admission::DEFAULT_EXEMPT_USER.to_string()])]
    exempt_users: Vec<String>,
    /// What to do with an Image `cluster` update that conflicts with existing policies.
    #[arg(long, value_enum, default_value_t = ImageGuard::Deny)]
    image_guard: ImageGuard,
    /// Warn at policy writes about the running images they would newly refuse, judged
    /// from the copy at this URL (the reconciler's `/running-images`); no registry is
    /// asked. Where this process also reconciles, its own judgement serves without it.
    #[arg(long, value_name = "URL")]
    running_images_from: Option<String>,
    /// The CA bundle that signs the `--running-images-from` endpoint's certificate.
    #[arg(long, value_name = "FILE", requires = "running_images_from")]
    running_images_ca: Option<PathBuf>,
    /// A bearer token file presented to the `--running-images-from` endpoint (re-read
    /// at each fetch: projected service-account tokens rotate).
    #[arg(long, value_name = "FILE", requires = "running_images_from")]
    running_images_token: Option<PathBuf>,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = LIMITS.max_body as u64, value_parser = clap::value_parser!(u64).range(1024..))]
    max_body: u64,
    /// Bytes of request bodies held at once, all connections together.
    #[arg(long, value_name = "BYTES", default_value_t = LIMITS.max_body_in_flight as u64, value_parser = clap::value_parser!(u64).range(1024..))]
    max_body_in_flight: u64,
    /// Bytes of request bodies one peer address may hold at once.
    #[arg(long, value_name = "BYTES", default_value_t = LIMITS.max_body_per_peer as u64, value_parser = clap::value_parser!(u64).range(65536..))]
    max_body_per_peer: u64,
    /// Milliseconds a request body may take to arrive after its headers (408 after).
    #[arg(long, value_name = "MS", default_value_t = LIMITS.body_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
    /// Admission decisions computed at once (not the core count: memory is what bounds them).
    #[arg(long, value_name = "N", default_value_t = LIMITS.max_decisions as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    max_decisions: u64,
    /// Bytes the decisions in progress may take while decoding, reserved at 29 × each body.
    #[arg(long, value_name = "BYTES", default_value_t = LIMITS.decode_budget as u64, value_parser = clap::value_parser!(u64).range(1048576..))]
    decode_budget: u64,
    /// Seconds a request may take, body read included; also the first request's deadline
    /// on a new connection.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Connections served at once (when all are taken, idle ones are closed).
    #[arg(long, value_name = "N", default_value_t = LIMITS.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds after SIGTERM during which /readyz fails but requests are still accepted,
    /// so that endpoints drop the pod before it stops listening (a second signal skips it).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    shutdown_delay: u64,
    /// Seconds in-flight requests get to finish once the server stops accepting.
    #[arg(long, value_name = "SECONDS", default_value_t = LIMITS.shutdown_grace.as_secs())]
    shutdown_grace: u64,
    #[command(flatten)]
    run: RunArgs,
}

/// What `serve` and `reconcile` share: the cluster, the reconciler and the metrics port.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Watch the cluster this kubeconfig names. Without it (and, for `serve`, without
    /// --state-dir), the in-cluster service account (or $KUBECONFIG) is used.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz (`none` turns it off); plain HTTP
    /// unless --metrics-tls-cert is given.
    #[arg(long, value_name = "ADDR", default_value = "[::]:9090", value_parser = parse_listen)]
    metrics_listen: Listen,
    /// PEM certificate for the metrics port (OpenShift's service CA issues it); reloaded
    /// when the file changes.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_key")]
    metrics_tls_cert: Option<PathBuf>,
    /// PEM private key for --metrics-tls-cert.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    metrics_tls_key: Option<PathBuf>,
    /// Serve /metrics only to a bearer token the API server authenticates (TokenReview)
    /// and allows to `get` the non-resource URL /metrics (SubjectAccessReview), as
    /// OpenShift's monitoring scrapes; /healthz and /readyz stay open for the kubelet.
    #[arg(long)]
    metrics_auth: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// `auto` writes the MachineConfigs and policy status (one leader at a time) unless
    /// the MCO renders policies itself (FeatureGate SigstoreImageVerification), then hands
    /// over; `full` always writes; `admission-only` never writes.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Namespace of the reconcile Lease.
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "cip-webhook"
    )]
    namespace: String,
    /// Name of the reconcile Lease.
    #[arg(long, value_name = "NAME", default_value = "cip-webhook-reconcile")]
    lease_name: String,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    lease_duration: u64,
    /// This replica's name in the Lease (defaults to the pod name, else host and pid).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    identity: Option<String>,
    /// Log the MachineConfig and status writes each pass calls for, without making them
    /// and without taking the Lease (safe beside the running reconciler).
    #[arg(long)]
    dry_run: bool,
    /// Seconds between full reconcile passes when nothing changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    resync: u64,
    /// Judge the images running in pods under the policies in force (the lease holder
    /// only; it reads pods, nodes, openshift-config/pull-secret and the ConfigMap of the
    /// Image CR's additionalTrustedCA, and fetches manifests and signatures from the
    /// registries) and write each policy's RunningImagesAccepted condition.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    running_images: bool,
    /// Seconds between running-images passes when nothing changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    running_images_interval: u64,
    /// Seconds at least between two writes of one policy's RunningImagesAccepted.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    running_images_write_interval: u64,
    /// Also use the pull secrets pods name (service accounts' included) for registry
    /// credentials, after openshift-config/pull-secret; needs get on Secrets in every
    /// namespace, which the manifests do not grant.
    #[arg(long)]
    running_images_pod_pull_secrets: bool,
    /// Milliseconds without a change that end a burst of changes (a GitOps sync) before
    /// the cluster is rendered and written again.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    settle_quiet: u64,
    /// Milliseconds a burst may delay rendering at most: longer than a GitOps sync takes
    /// (a 100-object `kubectl apply` spans about 7 s), so it is written twice at most.
    #[arg(long, value_name = "MS", default_value_t = 15000)]
    settle_max: u64,
}

#[derive(Clone, Copy, Debug)]
enum Listen {
    At(std::net::SocketAddr),
    Off,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "none" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::At)
        .map_err(|e| format!("{e} (an address like [::]:9090 or 127.0.0.1:9090, or none)"))
}

/// The server's defaults, shown by --help.
static LIMITS: std::sync::LazyLock<cip_webhook::webhook::server::Limits> =
    std::sync::LazyLock::new(Default::default);

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Full,
    AdmissionOnly,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// What rendering takes: the payload repositories and the size budget.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Payload repositories protected besides the one ClusterVersion names (repeatable;
    /// giving any replaces the defaults).
    #[arg(
        long = "payload-repo",
        value_name = "REPO",
        default_values_t = cip_core::cluster::DEFAULT_EXTRA_PAYLOAD_REPOS.map(String::from)
    )]
    payload_repos: Vec<String>,
    /// Largest generated MachineConfig accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = cip_core::render::DEFAULT_SIZE_BUDGET)]
    size_budget: usize,
}

/// The report's format, for commands that print one.
#[derive(Args, Debug, Clone)]
struct Output {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// [`Output`], also spelled `--output`/`-o` as kubectl does, where `--output` is not a
/// directory (`check`, `explain`).
#[derive(Args, Debug, Clone)]
struct OutputOrFormat {
    /// Output format.
    #[arg(long = "output", short = 'o', visible_alias = "format", value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `--image-guard`: the library's `ImageGuard`, spelled for the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ImageGuard {
    /// Refuse Image updates that conflict with existing policies.
    Deny,
    /// Admit them with a warning naming the policies.
    Warn,
}

impl From<ImageGuard> for cip_webhook::webhook::admission::ImageGuard {
    fn from(guard: ImageGuard) -> Self {
        match guard {
            ImageGuard::Deny => Self::Deny,
            ImageGuard::Warn => Self::Warn,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            input,
            output,
            files,
            diff,
            common,
            report,
        } => commands::render(
            &commands::RenderTargets {
                input: &input,
                output: output.as_deref(),
                files: files.as_deref(),
                diff,
            },
            &common.options(),
            report.format == Format::Json,
        ),
        Command::Check {
            state,
            old,
            files,
            exempt,
            strict,
            allow_empty,
            separately,
            common,
            report,
        } => commands::check(
            &commands::CheckOptions {
                state: state.as_deref(),
                old: &old,
                exempt,
                strict,
                allow_empty,
                separately,
            },
            &files,
            &common.options(),
            report.format == Format::Json,
        ),
        Command::Explain {
            input,
            kubeconfig,
            pool,
            namespace,
            image,
            common,
            report,
        } => commands::explain(
            read_from(input.as_deref(), kubeconfig.as_deref()),
            &pool,
            namespace.as_deref(),
            &image,
            &common.options(),
            report.format == Format::Json,
        ),
        Command::Verify {
            input,
            kubeconfig,
            pool,
            namespace,
            arch,
            authfile,
            openshift_version,
            image,
            common,
            report,
        } => commands::verify(
            &commands::VerifyArgs {
                from: read_from(input.as_deref(), kubeconfig.as_deref()),
                pool: &pool,
                namespace: namespace.as_deref(),
                arch: &arch,
                authfile: authfile.as_deref(),
                openshift_version: openshift_version.as_deref(),
                image: &image,
            },
            &common.options(),
            report.format == Format::Json,
        ),
        Command::Preview {
            input,
            images,
            pods,
            proposed,
            pool,
            arch,
            authfile,
            attachments,
            common,
            report,
        } => commands::preview(
            &commands::PreviewArgs {
                input: &input,
                images: images.as_deref(),
                pods: pods.as_deref(),
                proposed: &proposed,
                pool: &pool,
                arch: &arch,
                authfile: authfile.as_deref(),
                attachments: attachments.as_deref(),
            },
            &common.options(),
            report.format == Format::Json,
        ),
        Command::Serve { serve, common } => serve_until_stopped(&serve.serve_options(), &common),
        Command::Reconcile { run, common } => match run.mode {
            Mode::AdmissionOnly => Err(anyhow::anyhow!(
                "reconcile --mode admission-only would do nothing; admission is `serve`"
            )),
            _ => serve_until_stopped(&run.options(None, None), &common),
        },
        Command::Certs {
            out,
            dns,
            days,
            report,
        } => commands::certs(&out, &dns, days, report.format == Format::Json),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cip-webhook",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: many errors name their cause in their own
/// text already (`listening on ADDR: Address already in use`), and the chain repeats it.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

impl ServeArgs {
    fn serve_options(&self) -> cip_webhook::runtime::ServeOptions {
        let webhook = cip_webhook::runtime::WebhookOptions {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            admission: cip_webhook::webhook::admission::Config {
                exempt_users: self.exempt_users.clone(),
                image_guard: self.image_guard.into(),
            },
            limits: cip_webhook::webhook::server::Limits {
                max_body: self.max_body as usize,
                max_body_in_flight: self.max_body_in_flight as usize,
                max_body_per_peer: self.max_body_per_peer as usize,
                body_timeout: std::time::Duration::from_millis(self.body_timeout_ms),
                max_decisions: self.max_decisions as usize,
                decode_budget: self.decode_budget as usize,
                request_timeout: std::time::Duration::from_secs(self.request_timeout),
                idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
                max_connections: self.max_connections as usize,
                shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace),
                ..LIMITS.clone()
            },
            shutdown_delay: std::time::Duration::from_secs(self.shutdown_delay),
            running_images_from: self.running_images_from.clone().map(|url| {
                cip_webhook::impact::CopyFrom {
                    url,
                    ca: self.running_images_ca.clone(),
                    token: self.running_images_token.clone(),
                    every: std::time::Duration::from_secs(30),
                }
            }),
        };
        self.run.options(Some(webhook), self.state_dir.clone())
    }
}

impl RunArgs {
    fn options(
        &self,
        webhook: Option<cip_webhook::runtime::WebhookOptions>,
        state_dir: Option<PathBuf>,
    ) -> cip_webhook::runtime::ServeOptions {
        cip_webhook::runtime::ServeOptions {
            webhook,
            metrics_listen: match self.metrics_listen {
                Listen::At(addr) => Some(addr),
                Listen::Off => None,
            },
            metrics_tls: self
                .metrics_tls_cert
                .clone()
                .zip(self.metrics_tls_key.clone()),
            metrics_auth: self.metrics_auth,
            state: match state_dir {
                Some(dir) => cip_webhook::runtime::StateSource::Dir(dir),
                None => cip_webhook::runtime::StateSource::Cluster(self.kubeconfig.clone()),
            },
            log_json: self.log_format == LogFormat::Json,
            settle: cip_webhook::k8s::desired::Settle {
                quiet: std::time::Duration::from_millis(self.settle_quiet),
                max: std::time::Duration::from_millis(self.settle_max),
                ..Default::default()
            },
            reconcile: (self.mode != Mode::AdmissionOnly).then(|| {
                cip_webhook::runtime::ReconcileOptions {
                    auto: self.mode == Mode::Auto,
                    lease: cip_webhook::k8s::lease::LeaseConfig {
                        namespace: self.namespace.clone(),
                        name: self.lease_name.clone(),
                        identity: self.identity.clone().unwrap_or_else(default_identity),
                        duration: std::time::Duration::from_secs(self.lease_duration),
                    },
                    resync: std::time::Duration::from_secs(self.resync),
                    dry_run: self.dry_run,
                    running_images: self.running_images.then(|| {
                        cip_webhook::impact::ImpactOptions {
                            interval: std::time::Duration::from_secs(self.running_images_interval),
                            min_write_interval: std::time::Duration::from_secs(
                                self.running_images_write_interval,
                            ),
                            pod_pull_secrets: self.running_images_pod_pull_secrets,
                            ..Default::default()
                        }
                    }),
                }
            }),
        }
    }
}

fn serve_until_stopped(
    options: &cip_webhook::runtime::ServeOptions,
    common: &Common,
) -> anyhow::Result<ExitCode> {
    // A path given by hand that is not there is a typo, not a state to wait for: said at
    // once, exit 2, instead of a process that retries or is never ready.
    let given = match &options.state {
        cip_webhook::runtime::StateSource::Dir(dir) => Some(("--state-dir", dir)),
        cip_webhook::runtime::StateSource::Cluster(Some(kubeconfig)) => {
            Some(("--kubeconfig", kubeconfig))
        }
        cip_webhook::runtime::StateSource::Cluster(None) => None,
    };
    if let Some((flag, path)) = given {
        anyhow::Context::with_context(std::fs::metadata(path), || {
            format!("{flag} {}", path.display())
        })?;
    }
    cip_webhook::runtime::serve(options, &common.options())?;
    Ok(ExitCode::SUCCESS)
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "cip-webhook".into());
    format!("{host}-{}", std::process::id())
}

impl Common {
    fn options(&self) -> cip_core::render::RenderOptions {
        cip_core::render::RenderOptions {
            extra_payload_repos: self.payload_repos.clone(),
            size_budget: self.size_budget,
        }
    }
}

/// clap requires one of the two.
fn read_from<'a>(
    input: Option<&'a std::path::Path>,
    kubeconfig: Option<&'a std::path::Path>,
) -> commands::ReadFrom<'a> {
    match (input, kubeconfig) {
        (_, Some(k)) => commands::ReadFrom::Cluster(k),
        (Some(dir), None) => commands::ReadFrom::Dir(dir),
        (None, None) => unreachable!("clap requires --input or --kubeconfig"),
    }
}
