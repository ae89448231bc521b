"""Total cost of ownership: financing annuity plus power, per device-hour; then per token and per request."""

from __future__ import annotations

from dataclasses import dataclass

from terrazzo.catalog.catalog_loader import Catalog
from terrazzo.catalog.catalog_schema import TcoProfile

HOURS_PER_YEAR = 8760.0


def annuity_usd_per_year(price_usd: float, years: float, rate: float) -> float:
    """Level yearly payment that repays `price_usd` over `years` at interest `rate`."""
    if rate == 0:
        return price_usd / years
    return price_usd * rate / (1 - (1 + rate) ** -years)


@dataclass(frozen=True)
class HourlyCost:
    """$/h of one device, split into capital (financing), power and host share."""

    device: str
    capex_usd_h: float
    power_usd_h: float
    host_usd_h: float
    price_usd: float = 0.0  # up-front price of one device, which the capex annuity repays

    @property
    def usd_h(self) -> float:
        return self.capex_usd_h + self.power_usd_h + self.host_usd_h


def device_usd_per_hour(
    catalog: Catalog, device: str, profile: TcoProfile | str, price_profile: str | None = None,
) -> HourlyCost:
    prof = catalog.tco_profile(profile) if isinstance(profile, str) else profile
    dev = catalog.device(device)
    price = catalog.price_usd(dev.name, price_profile or prof.price_profile)
    capex = annuity_usd_per_year(price, prof.years, prof.interest_rate) / HOURS_PER_YEAR
    power = dev.tdp_w.value / 1000 * prof.power_fraction_of_tdp * prof.pue * prof.usd_per_kwh
    return HourlyCost(dev.name, capex, power, prof.host_share, price)


def financing_terms(profile: TcoProfile) -> str:
    """The TCO profile's financing and power assumptions, in words."""
    return (f"{profile.years:g}-year annuity at {profile.interest_rate:.1%}; power at "
            f"{profile.power_fraction_of_tdp:.0%} of TDP × PUE {profile.pue:g} × ${profile.usd_per_kwh:g}/kWh; "
            f"operations (host share) "
            f"${profile.host_share:g}/device-h (TCO profile {profile.name})")


def usd_per_million_tokens(usd_h: float, tokens_per_s: float) -> float:
    return usd_h / (tokens_per_s * 3600) * 1e6 if tokens_per_s > 0 else float("inf")
