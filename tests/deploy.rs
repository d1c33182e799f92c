//! The deployment examples, checked so they can't rot: every manifest in `deploy/kubernetes/`
//! parses as typed Kubernetes objects (and loses no field doing so); the electd arguments,
//! environment and `electd.toml` found in them, and the systemd unit's `ExecStart` with its
//! example environment file, pass the real `electd` binary's validation; the Dockerfile builds
//! and copies both binaries to the paths its `ENTRYPOINT` and `HEALTHCHECK` use.
//!
//! No etcd needed: electd validates its configuration before it connects, so each run points
//! it at a closed local port and only checks that it did not exit with a configuration (78) or
//! usage (64) error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use electd::config::{Layers, Settings, Timing, load_file};
use electd::exit::{CONFIG as EXIT_CONFIG, USAGE as EXIT_USAGE};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long electd must survive to count as having accepted its configuration.
const SURVIVE: Duration = Duration::from_millis(1500);
/// The member id the test gives the Downward API's `metadata.name`.
const POD_NAME: &str = "my-service-7d9f8c6b5-x2k4q";
const POD_IP: &str = "10.244.1.17";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// kustomize's `Kustomization`, only the fields the example uses (anything else is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

#[derive(Debug)]
enum Object {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    Kustomization(Kustomization),
}

/// Every document of every `deploy/kubernetes/*.yaml`, with the file it came from.
fn manifests() -> Vec<(String, Object)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = read(&path);
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name} document {}: not YAML: {e}", i + 1));
            if value.is_null() {
                continue;
            }
            let value = serde_json::to_value(&value)
                .unwrap_or_else(|e| panic!("{name} document {}: {e}", i + 1));
            let what = format!("{name} document {}", i + 1);
            out.push((name.clone(), typed_object(&what, value)));
        }
    }
    out
}

fn typed_object(what: &str, value: Value) -> Object {
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(strict(what, value))),
        ("apps/v1", "StatefulSet") => Object::StatefulSet(Box::new(strict(what, value))),
        ("v1", "Service") => Object::Service(Box::new(strict(what, value))),
        ("v1", "ConfigMap") => Object::ConfigMap(Box::new(strict(what, value))),
        ("policy/v1", "PodDisruptionBudget") => {
            Object::PodDisruptionBudget(Box::new(strict(what, value)))
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => Object::Kustomization(
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{what}: {e}")),
        ),
        other => panic!("{what}: unexpected apiVersion/kind {other:?}; teach tests/deploy.rs"),
    }
}

/// Deserialize as the typed object and serialize it back: a field the type doesn't know (a
/// typo, a wrong level of indentation) would be dropped silently, so the round trip must give
/// back exactly what the file says.
fn strict<T: DeserializeOwned + Serialize>(what: &str, value: Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid Kubernetes object: {e}"));
    let back = serde_json::to_value(&typed).expect("typed objects serialize");
    if let Some(diff) = first_difference("", &value, &back) {
        panic!("{what}: {diff} (unknown or misplaced field?)");
    }
    typed
}

fn first_difference(path: &str, want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let here = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(&here, x, y),
                    (Some(_), None) => Some(format!("{here} is not a field of this kind")),
                    // Nested objects such as volumeClaimTemplates serialize their type.
                    (None, Some(_)) if k == "apiVersion" || k == "kind" => None,
                    (None, Some(y)) => Some(format!("{here} appeared as {y}")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        _ if want == got => None,
        _ => Some(format!("{path}: {want} came back as {got}")),
    }
}

/// The pieces of the example the tests look at.
struct Example {
    deployment: Deployment,
    config_map: ConfigMap,
}

impl Example {
    fn load() -> Example {
        let mut deployments = Vec::new();
        let mut config_maps = Vec::new();
        for (_, object) in manifests() {
            match object {
                Object::Deployment(d) => deployments.push(*d),
                Object::ConfigMap(c) => config_maps.push(*c),
                _ => {}
            }
        }
        assert_eq!(deployments.len(), 1, "one Deployment expected");
        let deployment = deployments.pop().expect("one Deployment");
        let pod = pod_spec(&deployment);
        let config_name = pod
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.config_map.as_ref())
            .map(|c| c.name.clone())
            .expect("the pod mounts a ConfigMap");
        let config_map = config_maps
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(config_name.as_str()))
            .unwrap_or_else(|| panic!("no ConfigMap named {config_name:?} in the manifests"));
        Example {
            deployment,
            config_map,
        }
    }

    fn pod(&self) -> &PodSpec {
        pod_spec(&self.deployment)
    }

    fn sidecar(&self) -> &Container {
        let pod = self.pod();
        pod.init_containers
            .iter()
            .flatten()
            .chain(pod.containers.iter())
            .find(|c| c.name == "electd")
            .expect("a container named electd")
    }

    fn app(&self) -> &Container {
        self.pod()
            .containers
            .iter()
            .find(|c| c.name != "electd")
            .expect("an app container beside electd")
    }

    /// `--config`'s value in the sidecar's arguments.
    fn config_path(&self) -> String {
        let args = self.sidecar().args.clone().unwrap_or_default();
        flag_value(&args, "--config").expect("the sidecar passes --config")
    }

    /// The ConfigMap key `--config` points at, through the volume mounted at its directory.
    fn toml(&self) -> String {
        let path = PathBuf::from(self.config_path());
        let dir = path.parent().expect("config path has a directory");
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let mount = self
            .sidecar()
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == dir)
            .unwrap_or_else(|| panic!("nothing mounted at {}", dir.display()));
        let volume = self
            .pod()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mounted volume exists");
        let source = volume
            .config_map
            .as_ref()
            .expect("config volume is a ConfigMap");
        assert_eq!(
            Some(source.name.as_str()),
            self.config_map.metadata.name.as_deref()
        );
        self.config_map
            .data
            .as_ref()
            .and_then(|d| d.get(&file))
            .unwrap_or_else(|| panic!("ConfigMap has no key {file:?}"))
            .clone()
    }

    /// The sidecar's environment, with the Downward API's pod name and IP filled in and
    /// `$(VAR)` references to earlier variables expanded, as the kubelet does.
    fn env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for e in self.sidecar().env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => out.iter().fold(v.clone(), |v, (name, value)| {
                    v.replace(&format!("$({name})"), value)
                }),
                (None, Some(from)) => {
                    let field = from
                        .field_ref
                        .as_ref()
                        .unwrap_or_else(|| panic!("{}: only fieldRef is understood", e.name));
                    match field.field_path.as_str() {
                        "metadata.name" => POD_NAME.to_string(),
                        "status.podIP" => POD_IP.to_string(),
                        other => panic!("{}: unexpected fieldRef {other}", e.name),
                    }
                }
                other => panic!("{}: unexpected value {other:?}", e.name),
            };
            assert!(!value.contains("$("), "{}: unexpanded {value}", e.name);
            out.push((e.name.clone(), value));
        }
        out
    }
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the Deployment has a pod template")
}

/// The config as electd resolves it with the sidecar's environment `env` (with a command, so
/// the stop grace counts).
fn resolved(toml_path: &Path, env: &[(String, String)]) -> electd::config::Config {
    Layers {
        flags: Settings::default().set("id", POD_NAME),
        env: electd::config::from_env(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())),
        file: Some((
            toml_path.to_path_buf(),
            load_file(toml_path).expect("electd.toml loads"),
        )),
    }
    // The example wraps no command (a sidecar); the timing rule holds for it all the same.
    .resolve(false)
    .expect("electd.toml resolves")
}

#[test]
fn every_manifest_parses_as_a_typed_kubernetes_object() {
    let all = manifests();
    let kinds: BTreeSet<&str> = all
        .iter()
        .map(|(_, o)| match o {
            Object::Deployment(_) => "Deployment",
            Object::StatefulSet(_) => "StatefulSet",
            Object::Service(_) => "Service",
            Object::ConfigMap(_) => "ConfigMap",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::Kustomization(_) => "Kustomization",
        })
        .collect();
    for kind in [
        "Deployment",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }

    // The kustomization lists every other manifest, and only existing ones.
    let files: BTreeSet<String> = all.iter().map(|(f, _)| f.clone()).collect();
    let kustomization = all
        .iter()
        .find_map(|(_, o)| match o {
            Object::Kustomization(k) => Some(k),
            _ => None,
        })
        .expect("a kustomization");
    assert_eq!(kustomization.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization.kind, "Kustomization");
    let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
    let expected: BTreeSet<String> = files
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, expected, "kustomization.yaml resources");
    let example = Example::load();
    let sidecar_image = example.sidecar().image.clone().unwrap_or_default();
    let sidecar_image = sidecar_image.split(':').next().unwrap_or_default();
    for image in &kustomization.images {
        assert!(image.new_name.is_some() || image.new_tag.is_some());
        assert_eq!(
            image.name, sidecar_image,
            "kustomization image {:?} is not the sidecar's",
            image.name
        );
    }
}

#[test]
fn deployment_runs_three_replicas_with_a_hardened_sidecar() {
    let example = Example::load();
    let spec = example.deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let pod = example.pod();
    let sidecar = example.sidecar();

    // A native sidecar: up before the app starts, stopped only after the app has exited.
    let native = pod
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == "electd");
    assert!(
        native,
        "electd should be an init container with restartPolicy Always"
    );
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));

    // Member id from the Downward API pod name.
    let id = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ELECTD_ID")
        .expect("ELECTD_ID is set on the sidecar");
    let field = id
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .expect("ELECTD_ID comes from a fieldRef");
    assert_eq!(field.field_path, "metadata.name");

    // Non-root, read-only root file system, no privilege escalation.
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    for c in [sidecar, example.app()] {
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert!(c.resources.is_some(), "{} has no resources", c.name);
    }
    // The image's user is the pod's user.
    let dockerfile = Dockerfile::load();
    let uid = dockerfile.user().split(':').next().unwrap().to_string();
    assert_eq!(pod_security.run_as_user.map(|u| u.to_string()), Some(uid));

    // Liveness on /healthz; the API stays on loopback, so the probe runs inside the container.
    let tmp = tempfile::tempdir().unwrap();
    let toml_path = tmp.path().join("electd.toml");
    std::fs::write(&toml_path, example.toml()).unwrap();
    let config = resolved(&toml_path, &example.env());
    let http = config.http.expect("the example keeps the HTTP API on");
    assert!(
        http.ip().is_loopback(),
        "the HTTP API should stay on loopback"
    );
    let liveness = sidecar.liveness_probe.as_ref().expect("a liveness probe");
    let command = liveness
        .exec
        .as_ref()
        .and_then(|e| e.command.clone())
        .expect("an exec liveness probe");
    assert!(
        command.contains(&format!("http://{http}/healthz")),
        "{command:?} should ask http://{http}/healthz"
    );
    assert!(
        dockerfile.runtime_packages().contains(&command[0]),
        "{} is not installed in the image",
        command[0]
    );

    // The socket lives in a volume the app container mounts too.
    let socket = config
        .socket
        .clone()
        .expect("the example configures a socket");
    let socket_dir = socket.parent().unwrap();
    let mounted_at = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == socket_dir)
            .map(|m| m.name.clone())
    };
    let volume = mounted_at(sidecar).expect("the socket directory is a volume in electd");
    assert_eq!(mounted_at(example.app()), Some(volume.clone()));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .unwrap();
    assert!(
        volume.empty_dir.is_some(),
        "the socket volume is an emptyDir"
    );

    // Termination grace covers the wait before the lease is released — the stop grace of a
    // wrapped command, or (a sidecar, as here) the last budget handed to the app plus the
    // stop grace, at most TTL − margin — plus the lease revoke, with room to spare.
    let timing = config.timing();
    assert!(!config.has_command, "the example is a sidecar");
    let release = timing.kill_budget();
    let needed = release + timing.request_timeout + Duration::from_secs(2);
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds is set");
    assert!(
        Duration::from_secs(grace as u64) >= needed,
        "terminationGracePeriodSeconds {grace} < release wait {release:?} + revoke {:?} + 2s",
        timing.request_timeout
    );
}

#[test]
fn config_points_at_the_example_etcd_and_the_budget_covers_the_deployment() {
    let mut statefulsets = Vec::new();
    let mut services = Vec::new();
    let mut budgets = Vec::new();
    for (_, object) in manifests() {
        match object {
            Object::StatefulSet(s) => statefulsets.push(*s),
            Object::Service(s) => services.push(*s),
            Object::PodDisruptionBudget(p) => budgets.push(*p),
            _ => {}
        }
    }
    let example = Example::load();

    // electd.toml's endpoints are the etcd StatefulSet's pods behind its headless Service.
    let etcd = statefulsets.first().expect("the example etcd StatefulSet");
    let spec = etcd.spec.as_ref().expect("spec");
    let service_name = spec.service_name.clone().expect("serviceName");
    let service = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(service_name.as_str()))
        .unwrap_or_else(|| panic!("no Service {service_name:?} for the StatefulSet"));
    let service_spec = service.spec.as_ref().expect("Service spec");
    assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"), "headless");
    let client_port = service_spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("client"))
        .expect("a client port")
        .port;
    let name = etcd.metadata.name.clone().expect("StatefulSet name");
    let expected: Vec<String> = (0..spec.replicas.unwrap_or(1))
        .map(|i| format!("http://{name}-{i}.{service_name}:{client_port}"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let toml_path = tmp.path().join("electd.toml");
    std::fs::write(&toml_path, example.toml()).unwrap();
    assert_eq!(resolved(&toml_path, &example.env()).endpoints, expected);
    let args = spec
        .template
        .spec
        .as_ref()
        .expect("etcd pod spec")
        .containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let initial = flag_value(&args, "--initial-cluster").unwrap_or_else(|| {
        args.iter()
            .find_map(|a| a.strip_prefix("--initial-cluster=").map(str::to_string))
            .expect("--initial-cluster")
    });
    assert_eq!(
        initial.split(',').count(),
        expected.len(),
        "--initial-cluster names every replica"
    );

    // The disruption budget selects the Deployment's pods.
    let budget = budgets.first().expect("a PodDisruptionBudget");
    let selector = budget
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .expect("the budget selects by labels");
    let labels = example
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    for (k, v) in &selector {
        assert_eq!(labels.get(k), Some(v), "budget selector {k}={v}");
    }
}

#[test]
fn a_service_over_every_pods_proxy_reaches_the_leaders_app_and_every_pod_is_ready() {
    let example = Example::load();
    let tmp = tempfile::tempdir().unwrap();
    let toml_path = tmp.path().join("electd.toml");
    std::fs::write(&toml_path, example.toml()).unwrap();
    let config = resolved(&toml_path, &example.env());
    let sidecar = example.sidecar();
    let port_named = |c: &Container, port: u16| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.container_port == port as i32)
            .map(|p| p.name.clone().unwrap_or_default())
    };

    // The proxy listens on a port the sidecar declares, on every address of the pod.
    let proxy = config.proxy.expect("the example runs the proxy");
    assert!(
        proxy.ip().is_unspecified(),
        "the proxy listens on the pod's addresses"
    );
    let proxy_port = port_named(sidecar, proxy.port())
        .unwrap_or_else(|| panic!("electd declares no containerPort {}", proxy.port()));

    // Each pod advertises its own IP and the port its app listens on.
    let advertise = config.advertise.expect("the example advertises the app");
    let (host, port) = advertise.rsplit_once(':').unwrap();
    assert_eq!(host, POD_IP, "advertise the pod IP from the Downward API");
    let app_port: u16 = port.parse().unwrap();
    assert!(
        port_named(example.app(), app_port).is_some(),
        "the app declares no containerPort {app_port}"
    );
    assert_ne!(app_port, proxy.port());

    // A Service selects every pod and targets the proxy port.
    let labels = example
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let services: Vec<Service> = manifests()
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Service(s) => Some(*s),
            _ => None,
        })
        .collect();
    let service = services
        .iter()
        .find(|s| {
            let spec = s.spec.as_ref().unwrap();
            spec.selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .expect("a Service selecting the Deployment's pods");
    let target = service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .target_port
        .clone()
        .expect("a targetPort");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match target {
        IntOrString::String(name) => assert_eq!(name, proxy_port),
        IntOrString::Int(n) => assert_eq!(n, proxy.port() as i32),
    }

    // Every pod is ready while it can route: the readiness probe asks /ready, not /leader.
    let http = config.http.expect("HTTP API");
    let readiness = sidecar
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("an exec readiness probe");
    assert!(
        readiness.contains(&format!("http://{http}/ready")),
        "{readiness:?} should ask http://{http}/ready"
    );
}

#[test]
fn sidecar_arguments_and_config_pass_electd_validation() {
    let example = Example::load();
    let tmp = tempfile::tempdir().unwrap();
    let toml_path = tmp.path().join("electd.toml");
    let toml = example.toml();
    std::fs::write(&toml_path, &toml).unwrap();

    let run = |toml_path: &Path, command: &[&str]| {
        let mut args = example.sidecar().args.clone().unwrap_or_default();
        set_flag(&mut args, "--config", &toml_path.to_string_lossy());
        let mut env = example.env();
        sandbox(&mut args, &mut env, tmp.path());
        // electd.toml's proxy listens on every address: the test keeps to loopback.
        env.push(("ELECTD_PROXY".into(), "127.0.0.1:0".into()));
        if !command.is_empty() {
            args.push("--".into());
            args.extend(command.iter().map(|s| s.to_string()));
        }
        Run::start(&args, &env)
    };

    // As written, and as if it wrapped a command (so the stop grace must fit in the TTL).
    run(&toml_path, &[]).assert_accepted();
    run(&toml_path, &["true"]).assert_accepted();

    // A broken copy is refused, so this test can fail.
    let broken_path = tmp.path().join("broken.toml");
    std::fs::write(&broken_path, replace_key(&toml, "ttl", "\"1s\"")).unwrap();
    let (code, stderr) = run(&broken_path, &[]).finish();
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(stderr.contains("invalid ttl"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// A unit file: section → key → values in order (keys like `ExecStart` may repeat).
struct Unit(BTreeMap<String, BTreeMap<String, Vec<String>>>);

impl Unit {
    fn load(path: &Path) -> Unit {
        let text = read(path).replace("\\\n", " ");
        let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_string();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {line}", path.display()));
            sections
                .entry(current.clone())
                .or_default()
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
        Unit(sections)
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.0
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn service(&self, key: &str) -> &str {
        self.get("Service", key)
            .unwrap_or_else(|| panic!("electd@.service has no {key}="))
    }
}

/// `KEY=VALUE` lines of an environment file.
fn env_file(path: &Path) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// Expand the specifiers and environment variables systemd would, the way `ExecStart=` does:
/// `$VAR` splits into words, `${VAR}` stays one word.
fn expand_exec(line: &str, specifiers: &[(&str, &str)], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let line = line.trim_start_matches(['-', '@', '+', '!', ':']);
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        let mut word = word.to_string();
        for (spec, value) in specifiers {
            word = word.replace(spec, value);
        }
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            out.push(lookup(name));
        } else if let Some(name) = word.strip_prefix('$') {
            out.extend(lookup(name).split_whitespace().map(str::to_string));
        } else {
            assert!(!word.contains('$'), "unexpanded variable in {word:?}");
            out.push(word);
        }
    }
    out
}

fn systemd_duration(s: &str) -> Duration {
    match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}")),
    }
}

#[test]
fn systemd_unit_is_accepted_and_stops_in_time() {
    let dir = repo().join("deploy/systemd");
    let unit = Unit::load(&dir.join("electd@.service"));
    let example_env = dir.join("example.env");
    assert_eq!(unit.service("EnvironmentFile"), "/etc/electd/%i.env");
    assert_eq!(unit.service("Restart"), "on-failure");
    assert_eq!(unit.service("KillMode"), "mixed");
    assert_eq!(unit.service("NoNewPrivileges"), "yes");
    assert_eq!(unit.service("ProtectSystem"), "strict");
    assert!(
        unit.service("RestartPreventExitStatus")
            .split_whitespace()
            .any(|c| c == EXIT_CONFIG.to_string()),
        "a configuration error should not be restarted"
    );
    let runtime_dir = unit.service("RuntimeDirectory").replace("%i", "my-service");
    let state_dir = unit.service("StateDirectory").to_string();

    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(run_dir.join(&runtime_dir)).unwrap();
    let run_dir_s = run_dir.to_string_lossy().into_owned();
    let lib_dir = tmp.path().join("lib");
    std::fs::create_dir_all(lib_dir.join(&state_dir)).unwrap();
    let lib_dir_s = lib_dir.to_string_lossy().into_owned();
    let specifiers = [
        ("%i", "my-service"),
        ("%I", "my-service"),
        ("%t", run_dir_s.as_str()),
        ("%S", lib_dir_s.as_str()),
    ];
    let mut env = env_file(&example_env);
    let exec = expand_exec(unit.service("ExecStart"), &specifiers, &env);
    // The path the Debian package installs it to (tests/package.rs checks the package).
    assert_eq!(exec[0], "/usr/bin/electd", "ExecStart runs electd");
    let mut args = exec[1..].to_vec();
    assert_eq!(
        flag_value(&args, "--election").as_deref(),
        Some("my-service")
    );
    let socket = PathBuf::from(flag_value(&args, "--socket").expect("ExecStart passes --socket"));
    assert_eq!(
        socket.parent(),
        Some(run_dir.join(&runtime_dir).as_path()),
        "the socket lives in the unit's RuntimeDirectory"
    );
    let state =
        PathBuf::from(flag_value(&args, "--state-file").expect("ExecStart passes --state-file"));
    assert_eq!(
        state.parent(),
        Some(lib_dir.join(&state_dir).as_path()),
        "the state file lives in the unit's StateDirectory"
    );
    let dashes = args
        .iter()
        .position(|a| a == "--")
        .expect("`--` before CMD");
    assert!(
        dashes + 1 < args.len(),
        "example.env's ELECTD_COMMAND is wrapped"
    );

    // The stop grace (from the environment file) fits inside TimeoutStopSec with the revoke.
    let grace = env
        .iter()
        .find(|(k, _)| k == "ELECTD_STOP_GRACE")
        .map(|(_, v)| humantime::parse_duration(v).expect("ELECTD_STOP_GRACE parses"))
        .unwrap_or(Duration::from_secs(3));
    let ttl = env
        .iter()
        .find(|(k, _)| k == "ELECTD_TTL")
        .map(|(_, v)| humantime::parse_duration(v).expect("ELECTD_TTL parses"))
        .unwrap_or(Duration::from_secs(10));
    let timing = Timing::new(ttl, grace);
    let timeout = systemd_duration(unit.service("TimeoutStopSec"));
    assert!(
        timeout >= grace + timing.request_timeout + Duration::from_secs(2),
        "TimeoutStopSec {timeout:?} < stop grace {grace:?} + revoke {:?} + 2s",
        timing.request_timeout
    );

    // electd accepts the unit's flags with the example environment, also with no command (an
    // empty ELECTD_COMMAND leaves a bare `--`), and refuses a broken environment.
    let mut bare = expand_exec(
        unit.service("ExecStart"),
        &specifiers,
        &[("ELECTD_COMMAND".to_string(), String::new())],
    )[1..]
        .to_vec();
    assert_eq!(bare.last().map(String::as_str), Some("--"));
    let mut bare_env = env.clone();
    sandbox(&mut bare, &mut bare_env, tmp.path());
    Run::start(&bare, &bare_env).assert_accepted();
    sandbox(&mut args, &mut env, tmp.path());
    Run::start(&args, &env).assert_accepted();
    for (k, v) in env.iter_mut() {
        if k == "ELECTD_STOP_GRACE" {
            *v = ttl.as_secs().to_string() + "s";
        }
    }
    let (code, stderr) = Run::start(&args, &env).finish();
    assert_eq!(code, Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains("does not fit inside the lease TTL"),
        "{stderr}"
    );
}

/// `elect-run`, if this crate builds it (the Dockerfile test insists that it does).
fn elect_run_binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_elect-run") {
        Some(path) => path,
        None => panic!("the crate has no elect-run binary (src/bin/elect-run.rs)"),
    }
}

#[test]
fn crontab_example_runs_elect_run_once_per_slot_and_is_accepted() {
    let text = read(&repo().join("deploy/systemd/elect-run.crontab.example"));
    let jobs: Vec<Vec<String>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        // NAME=value lines set cron's environment.
        .filter(|l| !l.split_whitespace().next().unwrap_or("").contains('='))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert!(!jobs.is_empty(), "no cron line");
    for job in jobs {
        // m h dom mon dow user command… (the /etc/cron.d format)
        assert!(job.len() > 7, "{job:?}");
        assert!(
            job[6].ends_with("elect-run"),
            "{job:?} does not run elect-run"
        );
        let mut args = job[7..].to_vec();
        assert!(
            flag_value(&args, "--once-per").is_some(),
            "{job:?} lacks --once-per"
        );
        assert!(args.iter().any(|a| a == "--"), "{job:?} lacks `-- CMD`");

        // elect-run accepts the line (against a closed port it can only wait for etcd), and
        // refuses it with a stop grace that does not fit in the TTL.
        let tmp = tempfile::tempdir().unwrap();
        let mut env = Vec::new();
        sandbox(&mut args, &mut env, tmp.path());
        env.retain(|(k, _)| k != "ELECTD_HTTP" && k != "ELECTD_SOCKET");
        let run = Run::start_binary(elect_run_binary(), &args, &env);
        run.assert_accepted();
        let ttl = flag_value(&args, "--ttl").unwrap_or_else(|| "10s".into());
        let mut broken = args.clone();
        if !set_flag(&mut broken, "--stop-grace", &ttl) {
            broken.insert(0, ttl.clone());
            broken.insert(0, "--stop-grace".into());
        }
        let (code, stderr) = Run::start_binary(elect_run_binary(), &broken, &env).finish();
        assert_eq!(code, Some(EXIT_CONFIG), "{broken:?}: {stderr}");
        assert!(
            stderr.contains("does not fit inside the lease TTL"),
            "{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

struct Stage {
    from: String,
    name: Option<String>,
    /// (instruction, arguments) in order, continuation lines joined.
    instructions: Vec<(String, String)>,
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let text = read(&repo().join("Dockerfile"));
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical.into_iter().filter(|l| !l.trim().is_empty()) {
            let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let instruction = instruction.to_ascii_uppercase();
            let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
            if instruction == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    [_] => None,
                    other => panic!("FROM {other:?}"),
                };
                stages.push(Stage {
                    from: words[0].to_string(),
                    name,
                    instructions: Vec::new(),
                });
            } else {
                stages
                    .last_mut()
                    .expect("an instruction before FROM")
                    .instructions
                    .push((instruction, args));
            }
        }
        Dockerfile { stages }
    }

    fn runtime(&self) -> &Stage {
        self.stages.last().expect("a stage")
    }

    fn user(&self) -> String {
        self.runtime()
            .all("USER")
            .last()
            .cloned()
            .expect("the runtime stage sets USER")
    }

    /// Packages `apt-get install`ed in the runtime stage.
    fn runtime_packages(&self) -> Vec<String> {
        self.runtime().apt_packages()
    }
}

impl Stage {
    fn all(&self, instruction: &str) -> Vec<String> {
        self.instructions
            .iter()
            .filter(|(i, _)| i == instruction)
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn apt_packages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for run in self.all("RUN") {
            for command in run.split("&&") {
                let words: Vec<&str> = command.split_whitespace().collect();
                if words.starts_with(&["apt-get", "install"]) {
                    out.extend(
                        words[2..]
                            .iter()
                            .filter(|w| !w.starts_with('-'))
                            .map(|w| w.to_string()),
                    );
                }
            }
        }
        out
    }
}

/// A JSON exec-form argument list (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args:?} is not exec form: {e}"))
}

/// The crate's binaries: `src/bin/*.rs`.
fn crate_binaries() -> BTreeSet<String> {
    std::fs::read_dir(repo().join("src/bin"))
        .expect("src/bin")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn dockerfile_builds_both_binaries_and_runs_them_as_non_root_under_tini() {
    let docker = Dockerfile::load();
    assert!(docker.stages.len() >= 2, "multi-stage build");
    let runtime = docker.runtime();
    assert_eq!(runtime.from, "debian:bookworm-slim");

    // The build stage: Rust, protoc, a release build of every binary.
    let build = docker
        .stages
        .iter()
        .find(|s| s.all("RUN").iter().any(|r| r.contains("cargo build")))
        .expect("a stage that runs cargo build");
    let build_name = build.name.clone().expect("the build stage is named");
    assert!(build.from.starts_with("rust:"), "{}", build.from);
    let packages = build.apt_packages();
    for p in ["protobuf-compiler", "libprotobuf-dev"] {
        assert!(packages.iter().any(|x| x == p), "build stage lacks {p}");
    }
    let cargo = build
        .all("RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .unwrap();
    for flag in ["--release", "--locked", "--bins"] {
        assert!(cargo.contains(flag), "{cargo:?} lacks {flag}");
    }
    let workdir = build.all("WORKDIR").last().cloned().expect("build WORKDIR");
    let release = format!("{}/target/release", workdir.trim_end_matches('/'));

    // Everything cargo needs to build is copied in before the build, and is not kept out of
    // the build context: build.rs (without it env!("ELECTD_GIT_COMMIT") fails) and the
    // directories of the targets Cargo.toml declares (cargo refuses a manifest whose declared
    // targets are missing, even when it builds only the binaries).
    let mut inputs = vec!["Cargo.toml".to_string(), "Cargo.lock".into(), "src".into()];
    if repo().join("build.rs").exists() {
        inputs.push("build.rs".into());
    }
    let manifest: toml::Table = read(&repo().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml");
    for (kind, dir) in [
        ("bin", "src/bin"),
        ("example", "examples"),
        ("test", "tests"),
        ("bench", "benches"),
    ] {
        for target in manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target["name"]
                .as_str()
                .expect("a declared target has a name");
            let path = match target.get("path").and_then(|p| p.as_str()) {
                Some(p) => p.to_string(),
                None => format!("{dir}/{name}.rs"),
            };
            let top = path.split('/').next().unwrap().to_string();
            if !inputs.contains(&top) {
                inputs.push(top);
            }
        }
    }
    let copied_in: Vec<String> = build
        .all("COPY")
        .iter()
        .filter(|c| !c.starts_with("--from="))
        .flat_map(|c| {
            let words: Vec<String> = c.split_whitespace().map(str::to_string).collect();
            words[..words.len() - 1].to_vec()
        })
        .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    let ignored: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect();
    for input in &inputs {
        assert!(
            copied_in.iter().any(|c| c == input),
            "the build stage does not COPY {input} (copies {copied_in:?})"
        );
        assert!(
            !ignored.iter().any(|i| i == input),
            ".dockerignore keeps {input} out of the build context"
        );
    }
    let copy_build_rs = build
        .instructions
        .iter()
        .position(|(i, a)| i == "COPY" && a.split_whitespace().any(|w| w == "build.rs"));
    let run_cargo = build
        .instructions
        .iter()
        .position(|(i, a)| i == "RUN" && a.contains("cargo build"));
    assert!(
        copy_build_rs < run_cargo,
        "build.rs is copied after cargo build runs"
    );
    // The commit for `--version` can be passed in, since the context has no .git.
    assert!(
        build
            .all("ARG")
            .iter()
            .any(|a| a.split('=').next() == Some("ELECTD_GIT_COMMIT")),
        "the build stage takes ARG ELECTD_GIT_COMMIT"
    );

    // Both binaries copied from the build stage to /usr/local/bin.
    let mut copied = BTreeMap::new();
    for copy in runtime.all("COPY") {
        let words: Vec<&str> = copy.split_whitespace().collect();
        if words[0] != format!("--from={build_name}") {
            continue;
        }
        let (dest, sources) = words[1..].split_last().expect("COPY SRC DEST");
        for src in sources {
            let name = src
                .strip_prefix(&format!("{release}/"))
                .unwrap_or_else(|| panic!("COPY {src} is not from {release}"));
            let to = if dest.ends_with('/') {
                format!("{dest}{name}")
            } else {
                dest.to_string()
            };
            copied.insert(name.to_string(), to);
        }
    }
    for bin in ["electd", "elect-run"] {
        assert_eq!(
            copied.get(bin).map(String::as_str),
            Some(format!("/usr/local/bin/{bin}").as_str()),
            "{bin} is not copied to /usr/local/bin"
        );
    }
    let built = crate_binaries();
    for bin in ["electd", "elect-run"] {
        assert!(built.contains(bin), "the crate has no src/bin/{bin}.rs");
    }
    for bin in built {
        assert!(copied.contains_key(&bin), "src/bin/{bin}.rs is not copied");
    }

    // tini as PID 1 in front of electd; both installed.
    let apt = runtime.apt_packages();
    for p in ["tini", "ca-certificates"] {
        assert!(apt.iter().any(|x| x == p), "runtime stage lacks {p}");
    }
    let entrypoint = exec_form(&runtime.all("ENTRYPOINT").pop().expect("ENTRYPOINT"));
    assert_eq!(
        entrypoint,
        ["/usr/bin/tini", "--", copied["electd"].as_str()]
    );

    // HEALTHCHECK with a tool the image has, against /healthz.
    let health = runtime.all("HEALTHCHECK").pop().expect("HEALTHCHECK");
    let (_, cmd) = health.split_once("CMD ").expect("HEALTHCHECK … CMD");
    let cmd = exec_form(cmd);
    assert!(
        apt.contains(&cmd[0]) || copied.values().any(|p| *p == cmd[0]),
        "HEALTHCHECK runs {}, which the image lacks",
        cmd[0]
    );
    assert!(cmd.iter().any(|a| a.ends_with("/healthz")), "{cmd:?}");

    // Non-root.
    let user = docker.user();
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "0" && uid != "root" && !uid.is_empty(),
        "USER {user}"
    );

    // The build context keeps target/ out.
    let ignore = read(&repo().join(".dockerignore"));
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target")
    );
}

// ---------------------------------------------------------------------------------------------
// Running electd
// ---------------------------------------------------------------------------------------------

/// The value after `flag` (as `--flag value` or `--flag=value`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let args = &args[..end];
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

/// Replace `flag`'s value if present; returns whether it was.
fn set_flag(args: &mut [String], flag: &str, value: &str) -> bool {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    for i in 0..end {
        if args[i] == flag && i + 1 < end {
            args[i + 1] = value.to_string();
            return true;
        }
        if args[i].starts_with(&format!("{flag}=")) {
            args[i] = format!("{flag}={value}");
            return true;
        }
    }
    false
}

/// Point electd at a closed local port, an ephemeral HTTP port, a socket and a state file in `dir`, through
/// the flag if the example passes it, otherwise the environment (which beats the file).
fn sandbox(args: &mut [String], env: &mut Vec<(String, String)>, dir: &Path) {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let socket = dir.join(format!("electd-{}.sock", fastrand::u32(..)));
    let state = dir.join(format!("electd-{}.state", fastrand::u32(..)));
    let overrides = [
        (
            "--endpoints",
            "ELECTD_ENDPOINTS",
            format!("http://127.0.0.1:{closed}"),
        ),
        ("--http", "ELECTD_HTTP", "127.0.0.1:0".to_string()),
        ("--socket", "ELECTD_SOCKET", socket.to_string_lossy().into()),
        (
            "--state-file",
            "ELECTD_STATE_FILE",
            state.to_string_lossy().into(),
        ),
    ];
    for (flag, var, value) in overrides {
        if flag == "--socket" && flag_value(args, flag).is_some() {
            // The example's own socket path (already rewritten into a temp dir) stays.
            continue;
        }
        if !set_flag(args, flag, &value) {
            env.retain(|(k, _)| k != var);
            env.push((var.to_string(), value));
        }
    }
}

fn replace_key(toml: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let out: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{key} =")) {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no `{key} =` line to break");
    out.join("\n") + "\n"
}

/// One electd process, killed on drop.
struct Run {
    child: Child,
    args: Vec<String>,
}

impl Run {
    fn start(args: &[String], env: &[(String, String)]) -> Run {
        Run::start_binary(env!("CARGO_BIN_EXE_electd"), args, env)
    }

    fn start_binary(binary: &str, args: &[String], env: &[(String, String)]) -> Run {
        let child = Command::new(binary)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Run {
            child,
            args: args.to_vec(),
        }
    }

    /// Wait up to [`SURVIVE`]; if still running, SIGTERM it and wait for it to exit. Returns
    /// the exit code if it exited by itself within that time, and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + SURVIVE;
        let mut code = None;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                code = Some(status.code().unwrap_or(-1));
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if code.is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().expect("try_wait").is_none() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        (code, stderr)
    }

    /// electd did not refuse its flags or configuration.
    fn assert_accepted(self) {
        let args = self.args.clone();
        let (code, stderr) = self.finish();
        assert!(
            !matches!(code, Some(EXIT_USAGE) | Some(EXIT_CONFIG)),
            "{args:?} was refused (exit {code:?}):\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
