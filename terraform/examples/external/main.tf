# kvtool's VMs through HashiCorp's `external` data source and `kvtool tf-external` (no kvtool provider needed).
#   kvtool tf install --external        # builds hashicorp/external from the Go module proxy (see terraform/README.md)
#   kvtool tf apply terraform/examples/external -var name=lab-ada
terraform {
  required_providers {
    external = {
      source  = "hashicorp/external"
      version = "1.2.0"
    }
  }
}

variable "stack" {
  type    = string
  default = "lab"
}

variable "name" {
  type = string
}

data "external" "vm" {
  program = ["kvtool", "tf-external"]
  query   = { stack = var.stack, name = var.name }
}

data "external" "stack" {
  program = ["kvtool", "tf-external"]
  query   = { stack = var.stack }
}

output "vm" {
  value = { status = data.external.vm.result.status, node = data.external.vm.result.node, ip = data.external.vm.result.ip }
}

output "stack_ips" {
  value = jsondecode(data.external.stack.result.ips)
}
