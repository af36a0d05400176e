// Our own sandbox ("pause") program for the test environment's node: the process that holds a
// pod's namespaces. No dependencies; built static (CGO_ENABLED=0) like the other components.
module kratos-operator.dev/testenv/pause

go 1.24
