// Wrapper module: builds the test environment's Git server (fluxcd/gitkit; see main.go).
module kratos-operator.dev/testenv/gitserver

go 1.26.0

require github.com/fluxcd/gitkit v0.6.0

require (
	github.com/gofrs/uuid v4.2.0+incompatible // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
