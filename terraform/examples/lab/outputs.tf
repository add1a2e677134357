output "ips" {
  description = "student => guest IP"
  value       = { for student, vm in kvtool_virtual_machine.student : student => vm.ip }
}

output "nodes" {
  description = "student => node the VM runs on"
  value       = { for student, vm in kvtool_virtual_machine.student : student => vm.node }
}

output "stack_vms" {
  description = "every VM in the stack, with its status"
  value       = { for vm in data.kvtool_virtual_machines.lab.vms : vm.name => vm.status }
}
