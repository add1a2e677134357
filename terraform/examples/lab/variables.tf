variable "stack" {
  description = "kvtool stack (unit of ownership) for the lab"
  type        = string
  default     = "lab"
}

variable "students" {
  description = "one VM per student"
  type        = list(string)
  default     = ["ada", "alan", "grace"]
}

variable "course" {
  type    = string
  default = "intro-linux"
}

variable "image" {
  description = "tiny-linux boots from its kernel; any other image is a containerDisk root disk"
  type        = string
  default     = "tiny-linux"
}

variable "cpu" {
  type    = number
  default = 1
}

variable "memory" {
  type    = string
  default = "128Mi"
}

variable "run_strategy" {
  description = "Always (running) or Halted (defined, not started)"
  type        = string
  default     = "Always"
}
