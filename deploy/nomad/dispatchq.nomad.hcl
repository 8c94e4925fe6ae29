# dispatchq on Nomad: workers, two trackers (one leads, one stands by) and the webhook
# notifier, from the dispatchq image (the repository's Dockerfile).
#
#   nomad var put nomad/jobs/dispatchq \
#       redis_url='sentinel://dispatchq:PASSWORD@redis-s1:26379;sentinel://redis-s2:26379' \
#       redis_master_name=dispatchq notify_secret=...
#   nomad job run -var image=registry.example.com/dispatchq:1.0 deploy/nomad/dispatchq.nomad.hcl
#
# Settings: plain ones in `env`, secrets from Nomad Variables through a template (never in
# this file or the job's environment as Nomad shows it). Nomad itself is reached through
# the local agent's socket with the task's workload identity: attach a policy that may
# dispatch your parameterized jobs (docs/deployment.md).

variable "image" {
  type        = string
  description = "The dispatchq image (built from the repository's Dockerfile)."
}

variable "workers" {
  type        = number
  default     = 3
  description = "Worker allocations; each runs a gevent pool of `concurrency` requests."
}

variable "concurrency" {
  type    = number
  default = 1000
}

variable "queue" {
  type    = string
  default = "dispatchq"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

locals {
  # Every task's settings that are secret or per-site, from the Nomad Variable at
  # nomad/jobs/dispatchq (redis_url required; the others where set), rendered into the
  # task's secrets directory and read as environment variables.
  secrets = <<-EOT
    {{- with nomadVar "nomad/jobs/dispatchq" }}
    DISPATCHQ_REDIS_URL={{ .redis_url }}
    {{- with index . "redis_master_name" }}
    DISPATCHQ_REDIS_MASTER_NAME={{ . }}{{ end }}
    {{- with index . "redis_sentinel_password" }}
    DISPATCHQ_REDIS_SENTINEL_PASSWORD={{ . }}{{ end }}
    {{- with index . "notify_secret" }}
    DISPATCHQ_NOTIFY_SECRET={{ . }}{{ end }}
    {{- end }}
  EOT
}

job "dispatchq" {
  type        = "service"
  datacenters = var.datacenters

  # A new version replaces one allocation at a time, and only once the new one reports
  # healthy; a worker being replaced stops consuming at once and finishes what it runs
  # (kill_timeout), and whatever it still held goes back to the queue as its channel
  # closes (or, if it is killed, once its lease lapses).
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "workers" {
    count = var.workers

    network {
      port "metrics" {
        to = 9808
      }
    }

    service {
      name     = "dispatchq-worker"
      port     = "metrics"
      provider = "consul"

      # Healthy while this allocation's worker beats into Redis.
      check {
        name     = "consuming"
        type     = "script"
        task     = "worker"
        command  = "dispatchq"
        args     = ["health", "--local"]
        interval = "10s"
        timeout  = "5s"
      }
    }

    task "worker" {
      driver       = "docker"
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      config {
        image = var.image
        args  = ["worker", "--concurrency", "${var.concurrency}"]
        ports = ["metrics"]
      }

      identity {
        env = true # NOMAD_TOKEN: this task's workload identity
      }

      env {
        NOMAD_ADDR             = "unix://${NOMAD_SECRETS_DIR}/api.sock"
        DISPATCHQ_QUEUE        = var.queue
        DISPATCHQ_LOG_FORMAT   = "json"
        DISPATCHQ_METRICS_PORT = "9808"
        DISPATCHQ_DISPATCH_RATE  = "500"
      }

      template {
        data        = local.secrets
        destination = "secrets/dispatchq.env"
        env         = true
        change_mode = "restart"
      }

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }

  group "trackers" {
    count = 2

    task "tracker" {
      driver       = "docker"
      kill_timeout = "15s"

      config {
        image = var.image
        args  = ["tracker"]
      }

      identity {
        env = true
      }

      env {
        NOMAD_ADDR           = "unix://${NOMAD_SECRETS_DIR}/api.sock"
        DISPATCHQ_QUEUE      = var.queue
        DISPATCHQ_LOG_FORMAT = "json"
      }

      template {
        data        = local.secrets
        destination = "secrets/dispatchq.env"
        env         = true
        change_mode = "restart"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  group "notifier" {
    count = 1

    task "notifier" {
      driver       = "docker"
      kill_timeout = "15s"

      config {
        image = var.image
        args  = ["notifier"]
      }

      env {
        DISPATCHQ_LOG_FORMAT  = "json"
        DISPATCHQ_NOTIFY_HOSTS = "hooks.example.com"
      }

      template {
        data        = local.secrets
        destination = "secrets/dispatchq.env"
        env         = true
        change_mode = "restart"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
