# Quickstart: against the demo (`cargo xtask demo --detach`): source the settings file it
# prints (`set -a; . <file>; set +a`: WEFT_API_URL, WEFT_TOKEN), install the provider (README,
# "Terraform"), then `terraform init && terraform apply`.
terraform {
  required_providers {
    weft = {
      source  = "weft/weft"
      version = "0.1.0"
    }
  }
}

provider "weft" {}

variable "cluster" {
  description = "The cluster to apply to (the demo's)"
  type        = string
  default     = "prod-eu"
}

data "weft_cluster" "demo" {
  name = var.cluster
}

# A CiliumNetworkPolicy file, as kubectl would take it: only its spec goes to Weft.
resource "weft_policy" "web_from_frontend" {
  name                 = "tf-web-from-frontend"
  description          = "Only the frontend reaches the web tier, on 8080/TCP"
  labels               = { team = "web", managed-by = "terraform" }
  clusters             = [data.weft_cluster.demo.name]
  spec                 = jsonencode(yamldecode(file("${path.module}/web-from-frontend.yaml")).spec)
  wait_for_realization = true
}

resource "weft_service" "api" {
  cluster = data.weft_cluster.demo.id
  name    = "tf-api"
  labels  = { app = "api" }
  frontends = [{ vip = "10.96.0.80", port = 80, protocol = "TCP" }]
  backends = [
    { address = "10.0.1.10", port = 8080 },
    { address = "10.0.2.10", port = 8080, weight = 2 },
  ]
  algorithm            = "maglev"
  wait_for_realization = true
}

resource "weft_join_token" "node" {
  cluster            = data.weft_cluster.demo.name
  name               = "tf-node"
  expires_in_seconds = 3600
  max_uses           = 1
}

output "install_command" {
  description = "Run on a new machine to install an agent and join it to the cluster"
  value       = weft_join_token.node.install_command
  sensitive   = true
}
