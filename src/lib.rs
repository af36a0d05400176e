//! kratos-operator: manages Ory Kratos identities declaratively from Kubernetes objects.
