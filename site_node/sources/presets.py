"""Column presets for well-known replay files.

C-MAPSS (NASA turbofan degradation simulation, Saxena et al., PHM08): 26 whitespace-separated
columns, no header: engine unit, cycle, three operational settings, 21 sensors. Units follow
Saxena et al. (2008), table 2 (Rankine, psia, rpm; ratios are dimensionless).
"""

from __future__ import annotations

__all__ = ["CMAPSS_COLUMNS"]

_CMAPSS_SENSOR_UNITS = (
    "degR",  # s1  T2   total temperature at fan inlet
    "degR",  # s2  T24  total temperature at LPC outlet
    "degR",  # s3  T30  total temperature at HPC outlet
    "degR",  # s4  T50  total temperature at LPT outlet
    "psia",  # s5  P2   pressure at fan inlet
    "psia",  # s6  P15  total pressure in bypass duct
    "psia",  # s7  P30  total pressure at HPC outlet
    "rpm",  # s8  Nf   physical fan speed
    "rpm",  # s9  Nc   physical core speed
    "",  # s10 epr  engine pressure ratio
    "psia",  # s11 Ps30 static pressure at HPC outlet
    "pps/psi",  # s12 phi  fuel flow / Ps30
    "rpm",  # s13 NRf  corrected fan speed
    "rpm",  # s14 NRc  corrected core speed
    "",  # s15 BPR  bypass ratio
    "",  # s16 farB burner fuel-air ratio
    "",  # s17 htBleed bleed enthalpy
    "rpm",  # s18 Nf_dmd demanded fan speed
    "rpm",  # s19 PCNfR_dmd demanded corrected fan speed
    "lbm/s",  # s20 W31 HPT coolant bleed
    "lbm/s",  # s21 W32 LPT coolant bleed
)

# (name, unit) per column; plain data, so the config module can import it (no cycle).
CMAPSS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("unit", ""),
    ("cycle", "cycle"),
    ("op_setting_1", ""),
    ("op_setting_2", ""),
    ("op_setting_3", "%"),
    *((f"s{i}", u) for i, u in enumerate(_CMAPSS_SENSOR_UNITS, start=1)),
)
