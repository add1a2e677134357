// Command kvtool-containerd is one multi-call binary holding containerd 2.x
// for the real nodes of kvtool's embedded cluster: the daemon (with the CRI
// plugin, the overlayfs snapshotter and the runc v2 runtime, registered
// exactly as upstream's cmd/containerd does), the runc v2 shim and ctr.
//
// Debian 12 ships containerd 1.6, which is past its end of life and lacks the
// CRI RuntimeConfig RPC current kubelets ask for, and no release tarball can be
// downloaded here; the Go module proxy serves containerd, so we build it.
//
// The applet is picked by the basename of argv[0] (symlinks named containerd,
// containerd-shim-runc-v2 and ctr point at this binary), else by the first
// argument (`kvtool-containerd ctr version`). containerd finds its shim by
// looking for `containerd-shim-runc-v2` on PATH and next to its own
// executable, so the symlinks must sit beside the binary.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	shimmanager "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task/plugin"
	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	"github.com/containerd/containerd/v2/cmd/containerd/command"
	ctrapp "github.com/containerd/containerd/v2/cmd/ctr/app"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
)

const (
	daemonApplet = "containerd"
	shimApplet   = "containerd-shim-runc-v2"
	ctrApplet    = "ctr"

	// appletEnv carries the applet across the shim's re-exec of itself: the
	// shim's `start` action runs os.Executable() (the resolved binary, not the
	// symlink) with only -namespace/-id/-address flags, so neither argv[0] nor
	// the first argument names the applet there.
	appletEnv = "KVTOOL_CONTAINERD_APPLET"

	// shimTaskPlugin is the only plugin upstream's standalone shim registers
	// (and the daemon does not). Both sets are linked into this binary, and
	// both the daemon and the shim initialise every registered plugin, so each
	// applet keeps only its own before it starts.
	shimTaskPlugin = "io.containerd.ttrpc.v1.task"
)

var applets = map[string]func(args []string) int{
	daemonApplet: runDaemon,
	shimApplet:   runShim,
	ctrApplet:    runCtr,
}

func main() {
	name, args, ok := pickApplet(os.Args, os.Getenv(appletEnv))
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: %s APPLET [ARGS...]\n       (or invoke through a symlink named after the applet)\napplets:\n",
			filepath.Base(os.Args[0]))
		for _, n := range sortedApplets() {
			fmt.Fprintf(os.Stderr, "  %s\n", n)
		}
		os.Exit(2)
	}
	os.Exit(applets[name](args))
}

// pickApplet returns the applet to run and the argv it should see (argv[0]
// first). The environment is consulted last, for the shim's own re-exec.
func pickApplet(argv []string, fromEnv string) (string, []string, bool) {
	if len(argv) == 0 {
		return "", nil, false
	}
	if base := filepath.Base(argv[0]); applets[base] != nil {
		return base, argv, true
	}
	if len(argv) > 1 && applets[argv[1]] != nil {
		return argv[1], argv[1:], true
	}
	if applets[fromEnv] != nil {
		return fromEnv, argv, true
	}
	return "", nil, false
}

func sortedApplets() []string {
	names := make([]string, 0, len(applets))
	for n := range applets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// keepPlugins drops every registered plugin for which keep returns false.
func keepPlugins(keep func(uri string) bool) {
	all := registry.Graph(func(*plugin.Registration) bool { return false })
	registry.Reset()
	for i := range all {
		if keep(all[i].URI()) {
			registry.Register(&all[i])
		}
	}
}

// runDaemon is upstream's cmd/containerd/main.go.
func runDaemon(args []string) int {
	keepPlugins(func(uri string) bool { return uri != shimTaskPlugin })
	app := command.App()
	if err := app.Run(args); err != nil {
		fmt.Fprintf(os.Stderr, "containerd: %s\n", err)
		return 1
	}
	return 0
}

// runShim is upstream's cmd/containerd-shim-runc-v2/main.go. shim.Run exits
// the process itself.
func runShim(args []string) int {
	keepPlugins(func(uri string) bool { return uri == shimTaskPlugin })
	if err := os.Setenv(appletEnv, shimApplet); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", shimApplet, err)
		return 1
	}
	os.Args = args
	shim.Run(context.Background(), shimmanager.NewShimManager("io.containerd.runc.v2"))
	return 0
}

// runCtr is upstream's cmd/ctr/main.go (a client: it loads no plugins).
func runCtr(args []string) int {
	app := ctrapp.New()
	if err := app.Run(args); err != nil {
		fmt.Fprintf(os.Stderr, "ctr: %s\n", err)
		return 1
	}
	return 0
}
