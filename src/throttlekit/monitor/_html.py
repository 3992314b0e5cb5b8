"""The status endpoint's HTML page: one self-contained document an operator keeps open.

The page carries the status document as JSON in a data block (not executed; ``<``, ``>``
and ``&`` escaped, so no value can close the block) and one inline script that renders it
with ``textContent`` only (never HTML from data), then fetches the JSON again every few
seconds and shows request rates by outcome from the difference. Inline CSS and script are
allowed by their hashes in a strict Content-Security-Policy; nothing else loads.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

__all__ = ["CSP", "page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{padding:2px 10px;text-align:left}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.alert{color:#fff;background:#c0392b;padding:2px 8px;border-radius:3px}
.ok{color:#fff;background:#27ae60;padding:2px 8px;border-radius:3px}
#error{color:#c0392b}
"""

_SCRIPT = """
"use strict";
const KINDS=["allowed","throttled","blocked","banned","shed","challenged"];
const REFUSALS=KINDS.slice(1);
let last=null;
function el(tag,text,cls){const e=document.createElement(tag);
 if(text!==undefined&&text!==null)e.textContent=String(text);if(cls)e.className=cls;return e;}
function table(id,head,rows){const t=el("table");t.id=id;const tr=el("tr");
 head.forEach(h=>tr.appendChild(el("th",h)));t.appendChild(tr);
 rows.forEach(r=>{const row=el("tr");r.forEach(c=>{const n=typeof c==="number";
 row.appendChild(el("td",n?fmt(c):c,n?"n":""));});t.appendChild(row);});return t;}
function fmt(x){return Number.isInteger(x)?String(x):x.toFixed(2);}
function section(id,title){const s=document.getElementById(id);s.replaceChildren(el("h2",title));
 return s;}
function totals(d){const t={};KINDS.forEach(k=>t[k]=0);
 Object.values(d.counters||{}).forEach(c=>{REFUSALS.forEach(k=>{t[k]+=c[k]||0;});});
 t.allowed=(d.requests||0)-REFUSALS.reduce((a,k)=>a+t[k],0);return t;}
function outcomes(d){const s=section("outcomes","Requests by outcome");const t=totals(d);
 const dt=last?d.time-last.time:0;const p=last?totals(last):null;
 s.appendChild(table("outcome-table",["outcome","total","per second"],KINDS.map(k=>
  [k,t[k],dt>0?((t[k]-p[k])/dt).toFixed(1)+"/s":"-"])));
 const o=d.overall||{};s.appendChild(el("p","all traffic: "+fmt(o.rate||0)+" req/s, baseline "
  +fmt(o.baseline||0)+" req/s, threshold "+fmt(o.threshold||0)+" req/s"));}
function dimensions(d){const s=section("dimensions","What the detector sees");
 Object.entries(d.dimensions||{}).forEach(([name,v])=>{
  s.appendChild(el("h3",name+": "+fmt(v.rate)+" req/s (baseline "+fmt(v.baseline)+")"));
  s.appendChild(table("dim-"+name,["value","requests","req/s","baseline req/s"],
   (v.top||[]).map(r=>[r[0],r[1],r[2],r[3]])));});}
function attribution(d){const s=section("attribution","Attribution");const a=d.attribution;
 if(!a){s.appendChild(el("p","none yet"));return;}
 s.appendChild(el("p","dimension "+a.dimension+", "+Math.round(100*a.coverage)+
  "% of the excess, collateral "+Math.round(100*a.collateral)+"%"));
 s.appendChild(table("culprits",["value","req/s","baseline","share"],
  (a.culprits||[]).map(c=>[String(c.value),c.rate,c.baseline,c.share])));}
function shield(d){const s=section("shield","Shield");const h=d.shield;const c=d.containment;
 if(h)s.appendChild(el("p",(h.active?"engaged":"idle")+(h.dry_run?" (dry run)":"")+", "+
  h.bans+" bans, "+h.engagements+" engagements"));
 if(c)s.appendChild(table("containment",["dimension","value","allowance req/s","why"],
  (c.values||[]).map(v=>[v.dimension,v.value,v.allowance,v.reason])));
 if(d.blocked)s.appendChild(table("blocked",["blocked key","expires","reason"],
  d.blocked.slice(0,20).map(b=>[b.key,b.expires_at===null?"never":
  new Date(b.expires_at*1000).toISOString(),b.reason||""])));
 if(d.blocked_total!==undefined)s.appendChild(el("p",d.blocked_total+" blocked in all"));}
function admission(d){const s=document.getElementById("admission");const a=d.admission;
 if(!a){s.replaceChildren();return;}section("admission","Admission");
 const ms=x=>x===null?"-":(1000*x).toFixed(1)+" ms";
 s.appendChild(table("admission-table",["limit","in flight","min latency","latency","shed",
  "probing"],[[a.limit,a.inflight,ms(a.min_latency),ms(a.sample_latency),
  a.shed.reduce((x,y)=>x+y,0),a.probing?"yes":"no"]]));}
function incidents(d){const s=section("incidents","Incidents");const l=d.incidents||[];
 if(d.incident_open)s.appendChild(el("p","an incident is being recorded","alert"));
 s.appendChild(table("incident-table",["ended","peak req/s","explained by","actions",
  "refused"],l.map(i=>[new Date(i.ended_at*1000).toISOString(),i.peak_rate,
  i.dimension||"-",i.actions,i.refused])));}
function render(d){const h=document.getElementById("state");
 h.replaceChildren(el("span",d.anomaly?"ANOMALY":"normal",d.anomaly?"alert":"ok"),
  el("span"," "+d.requests+" requests seen; updated "+new Date(d.time*1000).toISOString()));
 outcomes(d);dimensions(d);attribution(d);shield(d);admission(d);incidents(d);last=d;}
async function refresh(){const err=document.getElementById("error");
 try{const r=await fetch(location.pathname+"?format=json",{headers:{Accept:"application/json"},
  credentials:"same-origin",cache:"no-store"});
  if(!r.ok)throw new Error("HTTP "+r.status);render(await r.json());err.textContent="";}
 catch(e){err.textContent="refresh failed: "+e.message;}}
render(JSON.parse(document.getElementById("tk-data").textContent));
setInterval(refresh,REFRESH_MS);
"""


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


#: the refresh period of the page, milliseconds
REFRESH_MS = 3000
_SCRIPT = _SCRIPT.replace("REFRESH_MS", str(REFRESH_MS))
#: the page's Content-Security-Policy: its own style and script by hash, fetches to itself
CSP = (f"default-src 'none'; style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
       "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_HEAD = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
         f"<meta name=\"referrer\" content=\"no-referrer\">"
         f"<title>throttlekit status</title><style>{_STYLE}</style></head><body>"
         "<h1>throttlekit status</h1><p id=\"state\"></p><p id=\"error\"></p>"
         "<section id=\"outcomes\"></section><section id=\"admission\"></section>"
         "<section id=\"attribution\"></section><section id=\"shield\"></section>"
         "<section id=\"dimensions\"></section><section id=\"incidents\"></section>"
         "<noscript>This page needs JavaScript; the same data is at ?format=json.</noscript>"
         "<script id=\"tk-data\" type=\"application/json\">")
_TAIL = f"</script><script>{_SCRIPT}</script></body></html>"


def page(payload: dict[str, Any]) -> bytes:
    """The page for one status document."""
    data = json.dumps(payload, default=str)
    # inside <script> only "</script" could end the block: no "<" is left to start it
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (_HEAD + data + _TAIL).encode()
