"""The SPDY/3 header-compression dictionary (a protocol constant).

Both directions of every SPDY/3 session prime their zlib stream with these 1,423
bytes; a peer that primes with anything else cannot decode our header blocks.
"""

from __future__ import annotations

import zlib

HEADER_DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04p"
    b"ost\x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05"
    b"trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccep"
    b"t-charset\x00\x00\x00\x0faccept-enco"
    b"ding\x00\x00\x00\x0faccept-language\x00"
    b"\x00\x00\raccept-ranges\x00\x00\x00\x03age\x00"
    b"\x00\x00\x05allow\x00\x00\x00\rauthorizatio"
    b"n\x00\x00\x00\rcache-control\x00\x00\x00\nco"
    b"nnection\x00\x00\x00\x0ccontent-base"
    b"\x00\x00\x00\x10content-encoding\x00\x00\x00\x10"
    b"content-language\x00\x00\x00\x0econt"
    b"ent-length\x00\x00\x00\x10content-lo"
    b"cation\x00\x00\x00\x0bcontent-md5\x00\x00\x00"
    b"\rcontent-range\x00\x00\x00\x0cconten"
    b"t-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00"
    b"\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04f"
    b"rom\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00"
    b"\x00\x00\x11if-modified-since\x00\x00\x00\r"
    b"if-none-match\x00\x00\x00\x08if-rang"
    b"e\x00\x00\x00\x13if-unmodified-since"
    b"\x00\x00\x00\rlast-modified\x00\x00\x00\x08loc"
    b"ation\x00\x00\x00\x0cmax-forwards\x00\x00\x00"
    b"\x06pragma\x00\x00\x00\x12proxy-authent"
    b"icate\x00\x00\x00\x13proxy-authoriza"
    b"tion\x00\x00\x00\x05range\x00\x00\x00\x07referer"
    b"\x00\x00\x00\x0bretry-after\x00\x00\x00\x06serve"
    b"r\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\x11tr"
    b"ansfer-encoding\x00\x00\x00\x07upgra"
    b"de\x00\x00\x00\nuser-agent\x00\x00\x00\x04vary"
    b"\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10ww"
    b"w-authenticate\x00\x00\x00\x06method"
    b"\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200"
    b" OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1"
    b".1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\ns"
    b"et-cookie\x00\x00\x00\nkeep-alive\x00"
    b"\x00\x00\x06origin100101201202205"
    b"206300302303304305306307"
    b"402405406407408409410411"
    b"412413414415416417502504"
    b"505203 Non-Authoritative"
    b" Information204 No Conte"
    b"nt301 Moved Permanently4"
    b"00 Bad Request401 Unauth"
    b"orized403 Forbidden404 N"
    b"ot Found500 Internal Ser"
    b"ver Error501 Not Impleme"
    b"nted503 Service Unavaila"
    b"bleJan Feb Mar Apr May J"
    b"un Jul Aug Sept Oct Nov "
    b"Dec 00:00:00 Mon, Tue, W"
    b"ed, Thu, Fri, Sat, Sun, "
    b"GMTchunked,text/html,ima"
    b"ge/png,image/jpg,image/g"
    b"if,application/xml,appli"
    b"cation/xhtml+xml,text/pl"
    b"ain,text/javascript,publ"
    b"icprivatemax-age=gzip,de"
    b"flate,sdchcharset=utf-8c"
    b"harset=iso-8859-1,utf-,*"
    b",enq=0."
)

# A wrong byte here breaks every session silently, so check the constant once at import.
if len(HEADER_DICTIONARY) != 1423 or zlib.adler32(HEADER_DICTIONARY) != 0xE3C6A7C2:
    raise ImportError("SPDY/3 header dictionary is corrupt")
