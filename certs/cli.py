"""`hpc-offload certs`: make the webhook's CA + serving certificate, and install them."""

from __future__ import annotations

from pathlib import Path

import click

from certs.generate import DEFAULT_DAYS, DEFAULT_RENEW_DAYS, ensure_dir, service_names

_service = click.option("--service", required=True, help="The webhook's Service name.")
_namespace = click.option("--namespace", required=True, help="The Service's namespace.")
_dns = click.option("--dns", multiple=True, help="Extra DNS SAN (repeatable).")
_ip = click.option("--ip", multiple=True, help="Extra IP SAN (repeatable).")
_days = click.option("--days", type=click.IntRange(min=1), default=DEFAULT_DAYS,
                     show_default=True, help="Validity of the serving certificate.")
_renew = click.option("--renew-days", type=click.IntRange(min=0), default=DEFAULT_RENEW_DAYS,
                      show_default=True, help="Renew when this close to expiry.")
_force = click.option("--force", is_flag=True, help="Make new certificates even if valid.")


@click.group()
def certs() -> None:
    """Generate and install the webhook's certificates."""


@certs.command()
@_service
@_namespace
@_dns
@_ip
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for ca.crt, ca.key, tls.crt, tls.key.")
@_days
@_renew
@_force
def generate(service: str, namespace: str, dns: tuple[str, ...], ip: tuple[str, ...],
             out: Path, days: int, renew_days: int, force: bool) -> None:
    """Write a CA and a serving certificate for <service>.<namespace>.svc into --out.

    Valid existing files are kept (run it as often as you like).
    """
    reason = ensure_dir(out, service_names(service, namespace, dns), list(ip), days,
                        renew_days, force)
    if reason is None:
        click.echo(f"kept: certificates in {out} are valid")
    else:
        click.echo(f"wrote: {out} ({reason})")


@certs.command()
@_service
@_namespace
@click.option("--secret", required=True, help="kubernetes.io/tls Secret to create/update.")
@click.option("--webhook-config", required=True,
              help="MutatingWebhookConfiguration whose caBundle to patch.")
@_dns
@_ip
@_days
@_renew
@_force
@click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True),
              help="Default: in-cluster config, else ~/.kube/config.")
def install(service: str, namespace: str, secret: str, webhook_config: str,
            dns: tuple[str, ...], ip: tuple[str, ...], days: int, renew_days: int,
            force: bool, kubeconfig: str | None) -> None:
    """Create or refresh the TLS Secret and patch caBundle into every webhook.

    The Secret's certificate is reused unless it is within --renew-days of expiry.
    """
    from kubernetes.client.exceptions import ApiException

    from certs.install import KubeClient
    from certs.install import install as do_install

    try:
        result = do_install(KubeClient(kubeconfig), service, namespace, secret, webhook_config,
                            service_names(service, namespace, dns), list(ip), days,
                            renew_days, force)
    except ApiException as exc:
        raise click.ClickException(f"Kubernetes API: {exc.status} {exc.reason}") from exc
    what = f"renewed ({result.renewed})" if result.renewed else "kept"
    click.echo(f"secret {namespace}/{secret}: {what}; valid until {result.not_after}")
    hooks = ", ".join(result.patched_webhooks) or "none (already trusted)"
    click.echo(f"caBundle patched in {webhook_config}: {hooks}")
