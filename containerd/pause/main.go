// Command kvtool-pause is the process of kvtool's pod-sandbox ("pause") image.
//
// No registry is reachable on kvtool machines, so registry.k8s.io/pause cannot
// be pulled; this tiny static binary is packed into a local image instead. It
// only has to hold the pod's namespaces open: it blocks until SIGINT or SIGTERM
// and then exits 0, like the upstream pause container.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		os.Stdout.WriteString("kvtool-pause\n")
		return
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
