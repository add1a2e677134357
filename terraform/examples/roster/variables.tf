variable "roster" {
  description = "path of the roster CSV: name, ssh_key (required here), other columns ignored"
  type        = string
}

variable "stack" {
  type    = string
  default = "roster"
}

variable "prefix" {
  description = "VM names are PREFIX-STUDENT"
  type        = string
  default     = "lab"
}

variable "course" {
  type    = string
  default = "intro-linux"
}

variable "image" {
  type    = string
  default = "debian-12"
}

variable "memory" {
  type    = string
  default = "1Gi"
}

variable "run_strategy" {
  description = "Always (running) or Halted (defined, not started)"
  type        = string
  default     = "Always"
}
