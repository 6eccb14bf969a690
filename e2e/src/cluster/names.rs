//! Names the local cluster shares with Kubernetes (well-known labels, taints, condition types)
//! and the ones it adds itself (Docker labels, annotations, field managers): one place, so
//! the controllers and the kubelet cannot disagree. No logic here.

/// Docker label on every container and network of one cluster; its value is the run's
/// `name_prefix`, so shutdown removes exactly what this run created.
pub const DOCKER_LABEL_CLUSTER: &str = "e2e.duomq.io/cluster";
/// Docker label: the uid of the pod a container belongs to.
pub const DOCKER_LABEL_POD_UID: &str = "e2e.duomq.io/pod-uid";
/// Docker label: the pod's namespace.
pub const DOCKER_LABEL_NAMESPACE: &str = "e2e.duomq.io/namespace";
/// Docker label: the pod's name.
pub const DOCKER_LABEL_POD: &str = "e2e.duomq.io/pod";
/// Docker label: the container's name in the pod spec (absent on the sandbox).
pub const DOCKER_LABEL_CONTAINER: &str = "e2e.duomq.io/container";
/// Docker label: the simulated node the container runs on.
pub const DOCKER_LABEL_NODE: &str = "e2e.duomq.io/node";
/// Docker label: how often this container of the pod was restarted before this instance,
/// like the real kubelet's `io.kubernetes.container.restartCount` (survives a kubelet that
/// lost its memory, e.g. after a node came back).
pub const DOCKER_LABEL_RESTART_COUNT: &str = "e2e.duomq.io/restart-count";
/// Docker label: `sandbox` (holds the pod's network namespace), `init` or `app`.
pub const DOCKER_LABEL_ROLE: &str = "e2e.duomq.io/role";

/// Annotation prefix on a Service: `e2e.duomq.io/proxy-<port name or number>` holds the
/// host loopback address forwarding to that port.
pub const PROXY_ANNOTATION_PREFIX: &str = "e2e.duomq.io/proxy-";

/// Where `container_kubeconfig` is mounted in every container; `KUBECONFIG` points here.
pub const KUBECONFIG_MOUNT_PATH: &str = "/var/run/duomq-e2e/kubeconfig";

pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_OS: &str = "kubernetes.io/os";
pub const LABEL_ARCH: &str = "kubernetes.io/arch";

pub const LABEL_STS_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
pub const LABEL_CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
pub const LABEL_POD_INDEX: &str = "apps.kubernetes.io/pod-index";
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Taint the node lifecycle controller puts on a node whose kubelet stopped reporting.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint on a node whose kubelet reports NotReady.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

/// Field managers, one per component, as in a real cluster.
pub const MANAGER_KUBELET: &str = "kubelet";
pub const MANAGER_SCHEDULER: &str = "default-scheduler";
pub const MANAGER_NODE_LIFECYCLE: &str = "node-controller";
pub const MANAGER_STATEFULSET: &str = "statefulset-controller";
pub const MANAGER_DEPLOYMENT: &str = "deployment-controller";
pub const MANAGER_ENDPOINTS: &str = "endpoint-controller";
pub const MANAGER_PV_BINDER: &str = "persistentvolume-binder";
pub const MANAGER_SERVICE_PROXY: &str = "duomq-e2e-service-proxy";

pub const KUBELET_VERSION: &str = "v1.33.0-duomq-e2e";
