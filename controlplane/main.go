// Command kvtool-controlplane is one multi-call binary holding the real
// Kubernetes components kvtool's embedded cluster runs: the control plane
// and the kubelet and kube-proxy of each embedded node.
//
// Each subcommand runs exactly one component in its own process: linking
// them into one process breaks (signal handlers and logging may only be set
// up once), so the Python supervisor starts one process per component.
// Invoked through a symlink, the link's name picks the component, so
// `kubectl -> kvtool-controlplane` works as a plain kubectl.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kubeproxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

var components = map[string]func(args []string) int{
	"etcd": func(args []string) int {
		// etcdmain parses os.Args itself; hand it argv0 + the component's flags.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"apiserver": func(args []string) int {
		os.Args = append([]string{"kube-apiserver"}, args...)
		return cli.Run(apiserver.NewAPIServerCommand())
	},
	"scheduler": func(args []string) int {
		os.Args = append([]string{"kube-scheduler"}, args...)
		return cli.Run(scheduler.NewSchedulerCommand())
	},
	"controller-manager": func(args []string) int {
		os.Args = append([]string{"kube-controller-manager"}, args...)
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kubelet": func(args []string) int {
		os.Args = append([]string{"kubelet"}, args...)
		return cli.Run(kubelet.NewKubeletCommand(context.Background()))
	},
	"kube-proxy": func(args []string) int {
		os.Args = append([]string{"kube-proxy"}, args...)
		return cli.Run(kubeproxy.NewProxyCommand())
	},
	"kubectl": func(args []string) int {
		os.Args = append([]string{"kubectl"}, args...)
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

func usage() {
	names := make([]string, 0, len(components))
	for name := range components {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "kvtool-controlplane %s\nusage: kvtool-controlplane COMPONENT [flags...]\ncomponents: %v\n", version, names)
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := components[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	if name == "version" || name == "--version" {
		fmt.Println(version)
		return
	}
	run, ok := components[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown component %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run(args))
}
