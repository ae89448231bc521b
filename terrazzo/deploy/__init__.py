"""From a plan to cluster files: a Ray cluster launcher config and KubeRay manifests."""
