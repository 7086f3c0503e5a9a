"""rktlet: a Kubernetes CRI runtime built around iottymux."""
