#include "server/frontend/prior_service.h"

#include <optional>

#include "server/frontend/surrogate_service.h"
#include "server/frontend/tensor_codec.h"

namespace dino::frontend {
namespace {

using PriorQuery = serving::RequestScheduler::PriorQuery;
using PriorAnswer = serving::RequestScheduler::PriorAnswer;

// A prior query of `kind` with the request's output_dtype, or the error naming the field.
absl::StatusOr<PriorQuery> NewPriorQuery(PriorQuery::Kind kind, dino::v1::DType output_dtype) {
  if (auto status = CheckOutputDtype(output_dtype); !status.ok()) return status;
  PriorQuery query;
  query.kind = kind;
  if (output_dtype == dino::v1::FP32) query.output_dtype = torch::kFloat32;
  if (output_dtype == dino::v1::FP64) query.output_dtype = torch::kFloat64;
  return query;
}

absl::StatusOr<serving::PriorOperator> Operator(dino::v1::PriorOperator op) {
  switch (op) {
    case dino::v1::COVARIANCE:
      return serving::PriorOperator::kCovariance;
    case dino::v1::PRECISION:
      return serving::PriorOperator::kPrecision;
    case dino::v1::COVARIANCE_SQRT:
      return serving::PriorOperator::kCovarianceSqrt;
    case dino::v1::COVARIANCE_SQRT_TRANSPOSE:
      return serving::PriorOperator::kCovarianceSqrtTranspose;
    case dino::v1::COVARIANCE_SQRT_INVERSE:
      return serving::PriorOperator::kCovarianceSqrtInverse;
    default:
      return absl::InvalidArgumentError(
          "prior_operator is required: COVARIANCE, PRECISION, COVARIANCE_SQRT, "
          "COVARIANCE_SQRT_TRANSPOSE or COVARIANCE_SQRT_INVERSE");
  }
}

}  // namespace

PriorService::PriorService(serving::RequestScheduler& scheduler, const BearerTokenAuth* auth)
    : scheduler_(scheduler), auth_(auth) {}

template <typename Encode>
grpc::ServerUnaryReactor* PriorService::Run(grpc::CallbackServerContext* context,
                                            const dino::v1::ModelRef& model,
                                            absl::StatusOr<PriorQuery> query, Encode encode) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, /*metrics=*/nullptr, "Prior", context, reactor)) return reactor;
  absl::StatusOr<PriorAnswer> answer = scheduler_.Prior(
      serving::ModelTarget{model.name(), model.version(), model.label()}, std::move(query));
  if (answer.ok()) encode(*answer);
  reactor->Finish(ToGrpcStatus(answer.status()));
  return reactor;
}

grpc::ServerUnaryReactor* PriorService::GetPrior(grpc::CallbackServerContext* context,
                                                 const dino::v1::GetPriorRequest* request,
                                                 dino::v1::GetPriorResponse* response) {
  return Run(context, request->model(),
             NewPriorQuery(PriorQuery::Kind::kDescribe, request->output_dtype()),
             [response](const PriorAnswer& answer) {
               const serving::ModelPrior& prior = *answer.prior;
               response->set_version(answer.version);
               response->set_input_dim(prior.dim());
               EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, response->mutable_mean());
               response->set_problem(pipeline::ProblemName(prior.problem()));
               response->set_mesh_cells(prior.mesh_cells());
               response->set_source(answer.source);
               response->set_description_json(prior.description().dump());
             });
}

grpc::ServerUnaryReactor* PriorService::SamplePrior(grpc::CallbackServerContext* context,
                                                    const dino::v1::SamplePriorRequest* request,
                                                    dino::v1::SamplePriorResponse* response) {
  auto query = NewPriorQuery(PriorQuery::Kind::kSample, request->output_dtype());
  if (query.ok()) {
    query->count = request->count();
    query->seed = request->seed();
    query->first_index = request->first_index();
  }
  return Run(context, request->model(), std::move(query), [response](const PriorAnswer& answer) {
    response->set_version(answer.version);
    EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, response->mutable_samples());
  });
}

grpc::ServerUnaryReactor* PriorService::ApplyPrior(grpc::CallbackServerContext* context,
                                                   const dino::v1::ApplyPriorRequest* request,
                                                   dino::v1::ApplyPriorResponse* response) {
  auto query = NewPriorQuery(PriorQuery::Kind::kApply, request->output_dtype());
  if (query.ok()) {
    absl::StatusOr<serving::PriorOperator> op = Operator(request->prior_operator());
    absl::StatusOr<torch::Tensor> vectors =
        DecodeTensor(request->vectors(), request->has_vectors(), "vectors");
    if (!op.ok()) {
      query = op.status();
    } else if (!vectors.ok()) {
      query = vectors.status();
    } else {
      query->op = *op;
      query->vectors = *std::move(vectors);
      query->with_mean = request->with_mean();
    }
  }
  return Run(context, request->model(), std::move(query), [response](const PriorAnswer& answer) {
    response->set_version(answer.version);
    EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, response->mutable_result());
  });
}

}  // namespace dino::frontend
