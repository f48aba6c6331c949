"""ISO 4217 currency codes and their minor units (decimal places of the smallest unit).

Hand-written on purpose: the packaged lists (``pycountry``) carry the codes but not the minor
units, which the canonical form needs to quantise money, and add a multi-megabyte dependency
for a table of under two hundred entries that changes every few years.
"""

from __future__ import annotations

from decimal import Decimal


def _codes(text: str) -> list[str]:
    """Split a whitespace-separated table of codes (easier to proofread than a list literal)."""
    return text.split()


#: Minor units for most currencies.
DEFAULT_MINOR_UNITS = 2

#: Active ISO 4217 alphabetic codes (funds and precious-metal codes excluded).
ISO_4217_CODES: frozenset[str] = frozenset(
    _codes(
        """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
    FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER
    ZAR ZMW ZWG
    """
    )
)

#: Currencies whose minor unit is not :data:`DEFAULT_MINOR_UNITS`.
MINOR_UNIT_EXCEPTIONS: dict[str, int] = {
    **dict.fromkeys(_codes("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"), 0),
    **dict.fromkeys(_codes("BHD IQD JOD KWD LYD OMR TND"), 3),
}


def is_known_currency(code: str) -> bool:
    """Whether ``code`` is an active ISO 4217 code (exact, upper-case)."""
    return code in ISO_4217_CODES


def minor_units(code: str) -> int:
    """Decimal places of ``code``'s smallest unit (2 for USD, 0 for JPY, 3 for KWD)."""
    return MINOR_UNIT_EXCEPTIONS.get(code, DEFAULT_MINOR_UNITS)


def quantum(code: str) -> Decimal:
    """The smallest amount of ``code`` as a Decimal exponent (``Decimal('0.01')`` for USD)."""
    return Decimal(1).scaleb(-minor_units(code))
