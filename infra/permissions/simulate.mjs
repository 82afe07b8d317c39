// Evaluates a batch of IAM requests with @cloud-copilot/iam-simulate (one process for the
// whole batch; infra/permissions.py drives it).
//
// stdin:  {"policies": {"<role>": [{"name": "...", "policy": {...}}]},
//          "requests": [{"id": 0, "role": "<role>", "principal": "arn:aws:sts::...",
//                        "account": "123456789012", "action": "s3:GetObject",
//                        "resource": "arn:aws:s3:::bucket/key", "context": {"s3:prefix": "x/"},
//                        "resourcePolicy": {...} (optional; e.g. a KMS key policy)}]}
// stdout: {"results": [{"id": 0, "decision": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied" | "Error",
//                       "dropped": ["s3:prefix"],          // context keys the action does not support
//                       "allow": [{"sid": "...", "actions": [...], "resources": [...]}],
//                       "nearMisses": [{"sid": "...", "conditions": [{"operator", "key", "missing", "supported"}]}],
//                       "error": "..."}]}
//
// Context keys: the simulator validates them per action. A key the action does not support
// is exactly a key AWS never populates for that action, so it is dropped here on purpose
// (and reported back), never passed through.

import { allowedContextKeysForRequest, runSimulation } from '@cloud-copilot/iam-simulate'

const readStdin = async () => {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

const asArray = (value) => (value === undefined || value === null ? [] : Array.isArray(value) ? value : [value])

// Allowed keys come lower-cased, some as templates ("aws:requesttag/tag-key",
// "s3:requestobjecttag/<key>", "kms:encryptioncontext:${encryptioncontextkey}").
const keyMatcher = (allowed) => {
  const exact = new Set()
  const prefixes = []
  for (const key of allowed) {
    const cut = [key.indexOf('${'), key.indexOf('<'), key.endsWith('/tag-key') ? key.length - 'tag-key'.length : -1]
      .filter((i) => i >= 0)
    if (cut.length) prefixes.push(key.slice(0, Math.min(...cut)))
    else exact.add(key)
  }
  return (key) => {
    const lower = key.toLowerCase()
    return exact.has(lower) || prefixes.some((p) => lower.startsWith(p))
  }
}

const allowedCache = new Map()
const supportedKeys = async (action, resource) => {
  const [service, name] = action.split(':')
  const cacheKey = `${action} ${resource}`
  if (!allowedCache.has(cacheKey)) {
    allowedCache.set(cacheKey, keyMatcher(await allowedContextKeysForRequest(service, name, resource, false, undefined)))
  }
  return allowedCache.get(cacheKey)
}

const analyses = (response) => {
  if (response.resultType === 'single') return [response.result.analysis]
  if (response.resultType === 'wildcard') return response.results.map((r) => r.analysis)
  return []
}

const evaluate = async (request, policies) => {
  const out = { id: request.id, decision: 'Error', dropped: [], allow: [], nearMisses: [], error: null }
  let supported
  try {
    supported = await supportedKeys(request.action, request.resource)
  } catch (e) {
    out.error = `unknown action or resource for ${request.action}: ${e.message}`
    return out
  }
  const context = {}
  for (const [key, value] of Object.entries(request.context || {})) {
    if (supported(key)) context[key] = value
    else out.dropped.push(key)
  }
  const response = await runSimulation(
    {
      request: {
        principal: request.principal,
        action: request.action,
        resource: { resource: request.resource, accountId: request.account },
        contextVariables: context,
      },
      identityPolicies: policies,
      ...(request.resourcePolicy ? { resourcePolicy: request.resourcePolicy } : {}),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    },
    {},
  )
  if (response.resultType === 'error') {
    out.error = JSON.stringify(response.errors)
    return out
  }
  out.decision = response.overallResult
  for (const analysis of analyses(response)) {
    const identity = analysis?.identityAnalysis
    if (!identity) continue
    for (const s of identity.allowStatements || []) {
      const explain = s.explain || {}
      out.allow.push({
        sid: explain.identifier,
        actions: asArray(explain.actions).filter((a) => a.matches).map((a) => a.action),
        resources: asArray(explain.resources).filter((r) => r.matches).map((r) => r.resource),
      })
    }
    for (const s of identity.unmatchedStatements || []) {
      const explain = s.explain || {}
      if (explain.effect !== 'Allow' || !explain.actionMatch || !explain.resourceMatch || explain.conditionMatch) continue
      out.nearMisses.push({
        sid: explain.identifier,
        conditions: asArray(explain.conditions)
          .filter((c) => !c.matches)
          .map((c) => ({
            operator: c.operator,
            key: c.conditionKeyValue,
            missing: Boolean(c.failedBecauseMissing),
            supported: supported(c.conditionKeyValue),
          })),
      })
    }
  }
  return out
}

const main = async () => {
  const input = JSON.parse(await readStdin())
  const results = []
  for (const request of input.requests) {
    const policies = input.policies[request.role]
    if (!policies) {
      results.push({ id: request.id, decision: 'Error', dropped: [], allow: [], nearMisses: [], error: `no policies for role ${request.role}` })
      continue
    }
    try {
      results.push(await evaluate(request, policies))
    } catch (e) {
      results.push({ id: request.id, decision: 'Error', dropped: [], allow: [], nearMisses: [], error: String(e?.stack || e) })
    }
  }
  process.stdout.write(JSON.stringify({ results }))
}

main().catch((e) => {
  process.stderr.write(String(e?.stack || e) + '\n')
  process.exit(2)
})
