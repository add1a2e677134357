# One debian-12 VM per student of a roster CSV (columns: name, ssh_key, any others), each with that
# student's own account and key — `kvtool apply --roster` in Terraform's terms.
#   kvtool image build debian-12
#   kvtool tf apply terraform/examples/roster -var roster=$PWD/examples/roster/students-with-keys.csv
# Terraform has nowhere to keep an initial password out of the VM's spec, so every row needs an ssh_key
# here (a row without one stops the plan); `kvtool apply --roster` gives keyless students a password
# kept in a Secret.
terraform {
  required_providers {
    kvtool = {
      source  = "kvtool.io/kvtool/kvtool"
      version = "~> 0.1"
    }
  }
}

provider "kvtool" {
  stack = var.stack
}

locals {
  students = { for row in csvdecode(file(var.roster)) : row.name => row }
}

resource "kvtool_virtual_machine" "student" {
  for_each = local.students

  name         = "${var.prefix}-${each.key}"
  image        = var.image
  cpu          = 1
  memory       = var.memory
  run_strategy = var.run_strategy
  labels       = { course = var.course, "kvtool.io/student" = each.key }
  # The image's default user (debian) stays for the teacher; the student gets an account with their key.
  user_data = "#cloud-config\n${yamlencode({
    manage_etc_hosts = true
    users = ["default", {
      name                = each.key
      shell               = "/bin/bash"
      groups              = ["sudo"]
      sudo                = "ALL=(ALL) NOPASSWD:ALL"
      ssh_authorized_keys = [each.value.ssh_key]
    }]
  })}"

  lifecycle {
    precondition {
      condition     = trimspace(lookup(each.value, "ssh_key", "")) != ""
      error_message = "Roster row ${each.key} has no ssh_key: this example logs students in by key only (kvtool apply --roster gives keyless students a password kept in a Secret)."
    }
  }

  wait_for_running = var.run_strategy == "Always"
  timeout          = "10m"
}

output "vms" {
  description = "student => VM name"
  value       = { for student, vm in kvtool_virtual_machine.student : student => vm.name }
}
