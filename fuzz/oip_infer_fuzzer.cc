// A ModelInfer request of KServe's Open Inference Protocol (inference.ModelInferRequest,
// protobuf bytes) the way the gRPC OipService answers it: oip::SubmitInfer (decoding and
// validation in oip_mapping, the scheduler, the model) on small served models. A request
// answered OK must have as many outputs as the mapping promised.
#include <cstdint>
#include <future>

#include "fuzz/served_models.h"
#include "server/frontend/oip_mapping.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  inference::ModelInferResponse response;
  std::promise<absl::Status> answered;
  dino::frontend::oip::SubmitInfer(*dino::fuzz::Served().scheduler, request,
                                   dino::serving::CallControl{}, &response,
                                   [&answered](const absl::Status& s) { answered.set_value(s); });
  const absl::Status status = answered.get_future().get();
  if (!status.ok()) return 0;
  Require(response.outputs_size() >= 1, "ModelInfer answered OK without outputs");
  Require(response.raw_output_contents_size() == 0 ||
              response.raw_output_contents_size() == response.outputs_size(),
          "ModelInfer answered raw contents for some outputs only");
  return 0;
}
