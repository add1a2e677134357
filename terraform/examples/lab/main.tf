# A lab of N tiny VMs, one per student, each with its own cloud-init greeting.
#   kvtool image build tiny-linux      # the kernel image the VMs boot
#   kvtool cluster up                  # or point the provider at any cluster with kvtool installed
#   kvtool tf apply terraform/examples/lab -var students='["ada","alan","grace"]'
terraform {
  required_providers {
    kvtool = {
      source  = "kvtool.io/kvtool/kvtool"
      version = "~> 0.1"
    }
  }
}

provider "kvtool" {
  # kubeconfig = "~/.kube/config"   # default: $KUBECONFIG, the embedded cluster if up, ~/.kube/config
  stack = var.stack                  # the same stack `kvtool plan --stack lab` and `kvtool status --stack lab` see
}

resource "kvtool_virtual_machine" "student" {
  for_each = toset(var.students)

  name         = "${var.stack}-${each.key}"
  image        = var.image
  cpu          = var.cpu
  memory       = var.memory
  run_strategy = var.run_strategy
  labels       = { course = var.course, student = each.key }
  user_data    = <<-EOT
    #!/bin/sh
    echo "welcome to ${var.course}, ${each.key}"
  EOT

  # Running VMs: wait until each guest is up and has an address, so the outputs below have it.
  wait_for_running = var.run_strategy == "Always"
  wait_for_ip      = var.run_strategy == "Always"
  timeout          = "5m"
}

# Everything in the stack, including VMs made with `kvtool apply --stack lab`.
data "kvtool_virtual_machines" "lab" {
  stack      = var.stack
  depends_on = [kvtool_virtual_machine.student]
}
