//! Controllers, scheduler and the Docker kubelet of the local control plane.
