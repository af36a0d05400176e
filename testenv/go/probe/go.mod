// Our own network probe for the test environment's node: what a test runs in a pod to see what
// a pod sees (name resolution, HTTP, TCP). No dependencies; built static like the other
// components.
module kratos-operator.dev/testenv/probe

go 1.24
