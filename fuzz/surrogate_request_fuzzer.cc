// A Surrogate inference request as the gRPC service receives it: the first byte picks the
// method, the rest is the request message (protobuf bytes). It goes the service's way:
// QueryOf (the frontend's decoding) → RequestScheduler::Submit → the model's Prepare
// (shapes, dtypes, finiteness, limits) → Compute, on small served models. What is answered
// must have the shape the protocol promises.
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "fuzz/served_models.h"
#include "server/frontend/surrogate_service.h"

namespace {

using dino::fuzz::Require;
using dino::serving::Answer;
using dino::serving::Method;
using dino::serving::ModelTarget;

// Decodes the request the service's way and submits it; the request (whose bytes the query's
// tensors view) lives until the answer is back.
template <typename Request>
absl::StatusOr<Answer> Call(Method method, const uint8_t* data, size_t size) {
  Request request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) {
    return absl::InvalidArgumentError("not a request message");
  }
  const auto& model = request.model();
  return dino::fuzz::SubmitAndWait(method,
                                   ModelTarget{model.name(), model.version(), model.label()},
                                   dino::frontend::QueryOf(request));
}

// Every answer carries values, and the last dimension of an Evaluate's values is d_Q.
void CheckAnswer(Method method, const Answer& answer) {
  Require(answer.values.defined(),
          absl::StrCat(dino::serving::MethodName(method), " answered without values"));
  if (method == Method::kEvaluate) {
    Require(answer.values.dim() >= 1 && answer.values.size(-1) == dino::fuzz::kOutputDim,
            "Evaluate answered values whose last dimension is not d_Q");
  }
  if (method == Method::kReducedJacobian) {
    Require(answer.q.defined(), "ReducedJacobian answered without q");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t selector = data[0] % 5;
  ++data;
  --size;
  constexpr Method kMethods[] = {Method::kEvaluate, Method::kJvp, Method::kVjp,
                                 Method::kReducedJacobian, Method::kJacobian};
  const Method method = kMethods[selector];
  absl::StatusOr<Answer> answer;
  switch (method) {
    case Method::kEvaluate:
      answer = Call<dino::v1::EvaluateRequest>(method, data, size);
      break;
    case Method::kJvp:
      answer = Call<dino::v1::JvpRequest>(method, data, size);
      break;
    case Method::kVjp:
      answer = Call<dino::v1::VjpRequest>(method, data, size);
      break;
    case Method::kReducedJacobian:
      answer = Call<dino::v1::ReducedJacobianRequest>(method, data, size);
      break;
    default:
      answer = Call<dino::v1::JacobianRequest>(method, data, size);
      break;
  }
  if (answer.ok()) CheckAnswer(method, *answer);
  return 0;
}
