"""What an unrated destination is, in words an operator recognises (`+882 123...` means little).

An unrated call has, by definition, no tariff row, so the tariff cannot describe it. The
description comes from the E.164 country code (ITU-T E.164 assignments): the longest known code
that starts the number, else its world numbering zone. Enough to tell "a satellite/international
network number" from "a new Caribbean NPA" at a glance; not a full numbering-plan database.
"""

from __future__ import annotations

# Country codes most often seen on VoIP CDRs, plus the special/non-geographic ranges that are
# the usual reason a tariff has no row.
COUNTRY_CODES = {
    "1": "North America (NANP)", "1242": "Bahamas", "1246": "Barbados", "1264": "Anguilla", "1268": "Antigua",
    "1284": "British Virgin Islands", "1340": "US Virgin Islands", "1345": "Cayman Islands", "1441": "Bermuda",
    "1473": "Grenada", "1649": "Turks and Caicos", "1664": "Montserrat", "1670": "Northern Mariana Islands",
    "1671": "Guam", "1684": "American Samoa", "1721": "Sint Maarten", "1758": "Saint Lucia", "1767": "Dominica",
    "1784": "Saint Vincent", "1787": "Puerto Rico", "1809": "Dominican Republic", "1829": "Dominican Republic",
    "1849": "Dominican Republic", "1868": "Trinidad and Tobago", "1869": "Saint Kitts and Nevis",
    "1876": "Jamaica", "1900": "NANP premium rate", "20": "Egypt", "212": "Morocco", "213": "Algeria",
    "216": "Tunisia", "221": "Senegal", "225": "Ivory Coast", "233": "Ghana", "234": "Nigeria", "254": "Kenya",
    "27": "South Africa", "30": "Greece", "31": "Netherlands", "32": "Belgium", "33": "France", "34": "Spain",
    "351": "Portugal", "353": "Ireland", "354": "Iceland", "358": "Finland", "36": "Hungary", "39": "Italy",
    "40": "Romania", "41": "Switzerland", "43": "Austria", "44": "United Kingdom", "45": "Denmark",
    "46": "Sweden", "47": "Norway", "48": "Poland", "49": "Germany", "51": "Peru", "52": "Mexico", "53": "Cuba",
    "54": "Argentina", "55": "Brazil", "56": "Chile", "57": "Colombia", "58": "Venezuela", "60": "Malaysia",
    "61": "Australia", "62": "Indonesia", "63": "Philippines", "64": "New Zealand", "65": "Singapore",
    "66": "Thailand", "675": "Papua New Guinea", "7": "Russia / Kazakhstan", "81": "Japan", "82": "South Korea",
    "84": "Vietnam", "86": "China", "852": "Hong Kong", "870": "Inmarsat (satellite)",
    "8816": "Iridium (satellite)", "8817": "Iridium (satellite)", "881": "Global Mobile Satellite System",
    "882": "International Networks (non-geographic)", "883": "International Networks (non-geographic)",
    "886": "Taiwan", "90": "Turkey", "91": "India", "92": "Pakistan", "93": "Afghanistan", "94": "Sri Lanka",
    "95": "Myanmar", "960": "Maldives", "961": "Lebanon", "962": "Jordan", "963": "Syria", "964": "Iraq",
    "965": "Kuwait", "966": "Saudi Arabia", "967": "Yemen", "971": "United Arab Emirates", "972": "Israel",
    "973": "Bahrain", "974": "Qatar", "977": "Nepal", "979": "International Premium Rate", "98": "Iran",
}
ZONES = {
    "1": "North America (NANP)", "2": "Africa (zone 2)", "3": "Europe (zone 3)", "4": "Europe (zone 4)",
    "5": "Central / South America (zone 5)", "6": "Oceania / South-East Asia (zone 6)", "7": "Russia / Kazakhstan",
    "8": "East Asia / special services (zone 8)", "9": "Asia / Middle East (zone 9)",
}
REASONS = {
    "no_rate": "no tariff row matches the number",
    "invalid_number": "the number does not normalise to E.164",
    "invalid": "the CDR cannot be rated (bad duration or time)",
}


def describe_destination(digits: str | None) -> str:
    """`882123` -> `International Networks (non-geographic)`; empty or unknown -> a plain phrase."""
    if not digits or not digits.isdigit():
        return "no usable number"
    for length in (4, 3, 2, 1):
        name = COUNTRY_CODES.get(digits[:length])
        if name:
            return name
    return ZONES.get(digits[0], "unassigned zone")


def describe_reason(reason: str | None) -> str:
    return REASONS.get(reason or "no_rate", reason or "no_rate")
