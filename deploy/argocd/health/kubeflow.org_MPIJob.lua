-- Argo CD health of a kubeflow MPIJob (v2beta1; argocd-cm: resource.customizations.health.kubeflow.org_MPIJob).
-- Judged by the mpi-operator's conditions, terminal ones first:
--   Failed -> Degraded; Succeeded -> Healthy; Suspended -> Suspended;
--   Restarting, Running, Created -> Progressing; none yet -> Progressing.
-- Argo CD runs this without Lua's standard libraries: only base functions and `table`.
local hs = {}

local function true_condition(conditions, condition_type)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == condition_type and condition.status == "True" then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local text = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local conditions = nil
if obj.status ~= nil then
  conditions = obj.status.conditions
end

local verdicts = {
  { type = "Failed", health = "Degraded" },
  { type = "Succeeded", health = "Healthy" },
  { type = "Suspended", health = "Suspended" },
  { type = "Restarting", health = "Progressing" },
  { type = "Running", health = "Progressing" },
  { type = "Created", health = "Progressing" },
}
for _, verdict in ipairs(verdicts) do
  local condition = true_condition(conditions, verdict.type)
  if condition ~= nil then
    hs.status = verdict.health
    hs.message = verdict.type .. ": " .. describe(condition)
    return hs
  end
end

hs.status = "Progressing"
hs.message = "Waiting for the MPI operator"
return hs
