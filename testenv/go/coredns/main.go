// Command coredns is CoreDNS with the plugins a cluster's DNS needs and nothing else: the
// kubernetes plugin answers for Services and pods, cache and loadbalance shape the answers,
// errors and prometheus report, health and ready are the probes. No forward plugin: the test
// environment has no upstream resolver, and names outside the cluster get NXDOMAIN/SERVFAIL
// here rather than a query off the machine.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
